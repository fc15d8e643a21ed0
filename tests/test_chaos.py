"""Workers killed with SIGKILL at random while tasks flow: nothing lost,
nothing invented, nothing ended twice (RELIABILITY.md, "worker SIGKILL mid-task")."""

from __future__ import annotations

import asyncio
import random
import signal
import time
from pathlib import Path

import pytest

from eventcore.keys import Keys
from eventcore.log import EventLog, Submission
from tests.checker import History, check
from tests.workerkit import spawn_worker, spec

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

TASKS = 600
KILLS = 6


async def test_random_sigkills_lose_nothing(r, redis_url: str, namespace: str, tmp_path: Path):
    elog = EventLog(r, Keys(namespace, partitions=2))
    history = History(tmp_path / "history.jsonl")
    rng = random.Random(7)
    workers = {
        n: spawn_worker(redis_url, namespace, n, ["--cpu"], partitions=2) for n in ("a", "b")
    }
    try:
        submitted = 0
        kills = 0
        next_kill = time.monotonic() + rng.uniform(1, 3)
        next_batch = 0.0
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            if submitted < TASKS and time.monotonic() >= next_batch:
                next_batch = time.monotonic() + 0.5
                batch = []
                for i in range(50):
                    kind = "sleep" if (submitted + i) % 3 == 0 else "noop"
                    params = {"seconds": 0.3, "steps": 1} if kind == "sleep" else {"i": i}
                    batch.append(Submission(spec=spec(kind, **params)))
                history.record("invoke", "submit", n=len(batch))
                try:
                    results = await elog.submit_many(batch)
                except Exception as exc:  # pragma: no cover - Redis stays up here
                    history.record("unknown", "submit", error=str(exc))
                    raise
                history.ok |= {x.task_id for x in results}
                history.record("ok", "submit", ids=[x.task_id for x in results])
                submitted += len(batch)
            if kills < KILLS and time.monotonic() >= next_kill:
                name = rng.choice(sorted(workers))
                workers[name].send_signal(signal.SIGKILL)
                workers[name].wait(10)
                workers[name].stderr.close()
                workers[name] = spawn_worker(
                    redis_url, namespace, f"{name}{kills}", ["--cpu"], partitions=2
                )
                kills += 1
                next_kill = time.monotonic() + rng.uniform(1, 3)
            if submitted >= TASKS and kills >= KILLS:
                ended = sum([await r.hlen(elog.keys.done(p)) for p in elog.keys.all_partitions()])
                if ended >= TASKS:
                    break
            await asyncio.sleep(0.1)
    finally:
        for w in workers.values():
            w.kill()
            w.wait(10)
            w.stderr.close()
    verdict = await check(elog, history)
    assert verdict.submitted == TASKS
    assert verdict.lost == [] and verdict.phantom == [] and verdict.double == []
    assert verdict.terminal == TASKS
    # The kills landed on work in flight: some tasks were delivered again.
    redelivered = [
        e.event.task_id
        for p in elog.keys.all_partitions()
        for e in await elog.read(elog.keys.events(p))
        if e.event.type_name() == "task.claimed" and e.event.deliveries > 1
    ]
    assert redelivered
