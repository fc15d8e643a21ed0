"""Workers killed with SIGKILL at random while tasks flow: nothing lost,
nothing invented, nothing ended twice (RELIABILITY.md, "worker SIGKILL mid-task").

The full size is RELIABILITY.md's: 2 workers, 2,000 tasks, one of them killed
every 1-3 s for as long as tasks flow and restarted at once.
``EVENTCORE_TEST_FAULT_SIZE=quick`` runs 600 tasks and 6 kills.

The 1-3 s count from the moment both workers are up: a worker killed while it
is still starting has nothing in hand to lose, and on a loaded two-core machine
a restart alone takes 2-5 s, so a clock that ran on through restarts would kill
workers that never got to run anything (and the tasks would not end)."""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import pytest

from eventcore.events import TERMINAL_EVENT_TYPES
from eventcore.keys import Keys
from eventcore.log import EventLog, Submission
from tests.checker import History, check
from tests.faultkit import fault_size
from tests.workerkit import spawn_worker, spec


class Size(NamedTuple):
    tasks: int
    kills: int | None  # None: keep killing until every task has ended
    seconds: float  # bound on the whole run, kills and all


SIZE = fault_size(full=Size(2000, None, 300), quick=Size(600, 6, 150))

pytestmark = [pytest.mark.slow, pytest.mark.timeout(SIZE.seconds + 90)]


async def test_random_sigkills_lose_nothing(r, redis_url: str, namespace: str, tmp_path: Path):
    log = EventLog(r, Keys(namespace, partitions=2))
    history = History(tmp_path / "history.jsonl")
    rng = random.Random(7)
    workers = {
        n: spawn_worker(redis_url, namespace, n, ["--cpu"], partitions=2) for n in ("a", "b")
    }
    starting = set(workers)  # nodes not seen up yet; the kill clock waits for them
    started = time.monotonic()
    try:
        submitted = 0
        kills = 0
        ended = 0
        next_kill = float("inf")
        next_batch = 0.0
        deadline = time.monotonic() + SIZE.seconds
        while time.monotonic() < deadline:
            if submitted < SIZE.tasks and time.monotonic() >= next_batch:
                next_batch = time.monotonic() + 0.5
                batch = []
                for i in range(50):
                    kind = "sleep" if (submitted + i) % 3 == 0 else "noop"
                    params = {"seconds": 0.3, "steps": 1} if kind == "sleep" else {"i": i}
                    batch.append(Submission(spec=spec(kind, **params)))
                history.record("invoke", "submit", n=len(batch))
                try:
                    results = await log.submit_many(batch)
                except Exception as exc:  # pragma: no cover - Redis stays up here
                    history.record("unknown", "submit", error=str(exc))
                    raise
                history.ok |= {x.task_id for x in results}
                history.record("ok", "submit", ids=[x.task_id for x in results])
                submitted += len(batch)
            ended = sum([await r.hlen(log.keys.done(p)) for p in log.keys.all_partitions()])
            if starting:
                starting = {n for n in starting if not await r.hexists(log.keys.nodes_seen(), n)}
                if not starting:
                    next_kill = time.monotonic() + rng.uniform(1, 3)
            flowing = submitted < SIZE.tasks or ended < SIZE.tasks
            may_kill = flowing if SIZE.kills is None else kills < SIZE.kills
            if may_kill and time.monotonic() >= next_kill:
                name = rng.choice(sorted(workers))
                workers[name].send_signal(signal.SIGKILL)
                workers[name].wait(10)
                workers[name].stderr.close()
                node = f"{name}{kills}"
                workers[name] = spawn_worker(redis_url, namespace, node, ["--cpu"], partitions=2)
                starting.add(node)
                kills += 1
                next_kill = float("inf")
            if not flowing and not may_kill:
                break
            await asyncio.sleep(0.1)
    finally:
        for w in workers.values():
            w.kill()
            w.wait(10)
            w.stderr.close()
    took = time.monotonic() - started
    verdict = await check(log, history)
    every_event = [
        e.event for p in log.keys.all_partitions() for e in await log.read(log.keys.events(p))
    ]
    # The kills landed on work in flight: some tasks were delivered again.
    redelivered = [
        e.task_id for e in every_event if e.type_name() == "task.claimed" and e.deliveries > 1
    ]
    endings = Counter(e.type_name() for e in every_event if isinstance(e, TERMINAL_EVENT_TYPES))
    print(
        f"\nworker SIGKILL: {verdict.submitted} tasks, {kills} kills in {took:.0f} s; "
        f"{verdict.terminal} ended ({', '.join(f'{n} {k}' for k, n in sorted(endings.items()))}); "
        f"lost {len(verdict.lost)}, phantom {len(verdict.phantom)}, double {len(verdict.double)}; "
        f"{len(set(redelivered))} tasks delivered again"
    )
    assert verdict.submitted == SIZE.tasks
    assert verdict.lost == [] and verdict.phantom == [] and verdict.double == []
    assert verdict.terminal == SIZE.tasks
    assert kills >= (SIZE.kills or 6), f"only {kills} kills in {took:.0f} s"
    assert redelivered
