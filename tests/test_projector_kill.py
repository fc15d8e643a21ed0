"""``eventcore project`` killed with SIGKILL at random while the log grows
(RELIABILITY.md, "projector kill -9"): once it has caught up, its views are
byte-equal to a rebuild from zero into a fresh view namespace, and to a
replay of the log; the feed announced every view's final state.

``EVENTCORE_TEST_PROJECTOR_KILLS`` lowers the number of kills (default 50).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from eventcore.events import (
    ErrorInfo,
    TaskCancelRequested,
    TaskClaimed,
    TaskFailed,
    TaskProgress,
    TaskResultStale,
    TaskRetryScheduled,
    TaskSpec,
    TaskStarted,
    TaskSucceeded,
)
from eventcore.ids import stream_id_key
from eventcore.keys import Keys
from eventcore.log import EventLog, Submission
from projections.read import caught_up
from projections.replay import replay
from projections.store import FEED_MAXLEN, GLOBAL, ViewStore
from projections.tools import diff_views, rebuild, whole_log
from projections.views import StatsView, TaskView
from tests.viewkit import canonical, dump_namespace, stored_views
from tests.workerkit import spawn_worker, spec

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

KILLS = int(os.environ.get("EVENTCORE_TEST_PROJECTOR_KILLS", "50"))
PARTITIONS = 2
BATCH = 100  # small batches: more boundaries between writing and acking to land on
_task = msgspec.msgpack.Decoder(TaskView)
_enc = msgspec.msgpack.Encoder()


def spawn_projector(redis_url: str, namespace: str, log_path: Path) -> subprocess.Popen[bytes]:
    """``eventcore project`` as a real process; its stderr goes to ``log_path``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTCORE_")}
    env.update(
        {
            "REDIS_URL": redis_url,
            "EVENTCORE_NAMESPACE": namespace,
            "EVENTCORE_PARTITIONS": str(PARTITIONS),
        }
    )
    with log_path.open("ab") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "eventcore.cli", "project", "--batch", str(BATCH)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )


async def _wait_started(log_path: Path, starts: int, timeout: float = 20) -> None:
    """Until the projector's log shows its ``starts``-th start line."""
    deadline = time.monotonic() + timeout
    while log_path.read_text().count(": views ") < starts:
        assert time.monotonic() < deadline, log_path.read_text()
        await asyncio.sleep(0.01)


async def write_lifecycles(log: EventLog, stop: asyncio.Event, rng: random.Random) -> int:
    """Append until ``stop``: tasks for the real worker (queue q), and tasks on
    queue s that nobody reads, taken through whole lifecycles by hand (retries,
    progress, cancel requests, stale results). Returns the tasks submitted."""
    submitted = 0
    error = ErrorInfo(type="ValueError", message="bad", retryable=False)
    while not stop.is_set():
        work = [
            Submission(spec=spec("fail", retryable=False) if i % 5 == 0 else spec("noop", i=i))
            for i in range(rng.randint(1, 4))
        ]
        hand = [
            Submission(spec=TaskSpec(kind="resize", queue="s", params={"i": i}))
            for i in range(rng.randint(2, 12))
        ]
        results = await log.submit_many(work + hand)
        submitted += len(results)
        ids = [r.task_id for r in results[len(work) :]]
        node = rng.choice(["h1", "h2"])
        for attempt in (1, 2):
            await log.append_many(
                [
                    TaskClaimed(
                        task_id=t, node=node, attempt=attempt, deliveries=attempt, entry_id="1-0"
                    )
                    for t in ids
                ]
            )
            await log.append_many(
                [TaskStarted(task_id=t, node=node, attempt=attempt) for t in ids]
                + [TaskProgress(task_id=t, attempt=attempt, progress=0.5) for t in ids[::3]]
            )
            if attempt == 1:
                retried = ids[::2]
                await log.append_many(
                    [
                        TaskRetryScheduled(
                            task_id=t, attempt=2, run_at=time.time(), delay=0.0, error=error
                        )
                        for t in retried
                    ]
                    + [TaskCancelRequested(task_id=t, reason="test") for t in ids[1::4]]
                )
                finishing = [t for t in ids if t not in set(retried)]
                await log.append_many(
                    [
                        TaskSucceeded(task_id=t, node=node, attempt=1, result={"ok": True})
                        if i % 3
                        else TaskFailed(task_id=t, node=node, attempt=1, error=error)
                        for i, t in enumerate(finishing)
                    ]
                )
                ids = retried
        await log.append_many(
            [TaskSucceeded(task_id=t, node=node, attempt=2, duration=0.1) for t in ids]
            + [
                TaskResultStale(
                    task_id=t, node="h3", attempt=1, outcome="task.succeeded", reason="late"
                )
                for t in ids[::4]
            ]
        )
        await asyncio.sleep(rng.uniform(0.0, 0.03))
    return submitted


async def _pending(log: EventLog, marks: dict[str, str]) -> tuple[int, int]:
    """Entries the projector group holds unacked: (already written, not written)."""
    written = unwritten = 0
    for stream in [*(log.keys.events(p) for p in log.keys.all_partitions()), log.keys.nodes()]:
        rows = await log.redis.xpending_range(stream, "projector", min="-", max="+", count=10_000)
        mark = tuple(map(int, marks.get(stream, "0-0").split("-")))
        for row in rows:
            eid = tuple(map(int, row["message_id"].decode().split("-")))
            if eid <= mark:
                written += 1
            else:
                unwritten += 1
    return written, unwritten


async def _wait_caught_up(log: EventLog, store: ViewStore, timeout: float = 120) -> None:
    streams = [*(log.keys.events(p) for p in log.keys.all_partitions()), log.keys.nodes()]
    deadline = time.monotonic() + timeout
    for stream in streams:
        ((tip, _),) = await log.redis.xrevrange(stream, count=1)
        while not await caught_up(store, stream, tip.decode()):
            assert time.monotonic() < deadline, f"projector never caught up with {stream}"
            await asyncio.sleep(0.05)


def _feed_finals(rows: list[Any]) -> dict[str, bytes]:
    """The last view the feed announced per entity, named as ``canonical`` names them."""
    out: dict[str, bytes] = {}
    for _, fields in rows:
        entity, name = fields[b"entity"].decode(), fields[b"id"].decode()
        if entity == "stats":
            key = "stats" if name == GLOBAL else f"stats:{name}"
        else:
            key = f"{entity}:{name}"
        out[key] = fields[b"view"]
    return out


async def test_projector_sigkilled_at_random_rebuilds_byte_equal(
    r, redis_url: str, namespace: str, tmp_path: Path
) -> None:
    log = EventLog(r, Keys(namespace, partitions=PARTITIONS))
    rng = random.Random(11)
    log_path = tmp_path / "projector.log"
    worker = spawn_worker(redis_url, namespace, "w1", ["--cpu"], partitions=PARTITIONS)
    projector = spawn_projector(redis_url, namespace, log_path)
    stop = asyncio.Event()
    writer = asyncio.create_task(write_lifecycles(log, stop, rng))
    t0 = time.monotonic()
    landed = {"written, not acked": 0, "read, not written": 0}
    try:
        for kill in range(1, KILLS + 1):
            await _wait_started(log_path, kill)
            await asyncio.sleep(rng.uniform(0.0, 0.4))
            assert projector.poll() is None, log_path.read_text()
            projector.send_signal(signal.SIGKILL)
            assert projector.wait(10) == -signal.SIGKILL
            written, unwritten = await _pending(log, await ViewStore(log).watermark())
            landed["written, not acked"] += written > 0
            landed["read, not written"] += unwritten > 0
            projector = spawn_projector(redis_url, namespace, log_path)
        if KILLS >= 20:  # about ten of each in 50 kills: the kills hit batches in flight
            assert all(landed.values()), landed
        stop.set()
        submitted = await writer
        kill_seconds = time.monotonic() - t0
        # The worker drains and says so on the node stream; then nothing more is written.
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(60) == 0
        store = ViewStore(log)
        await _wait_caught_up(log, store)
        projector.send_signal(signal.SIGTERM)
        assert projector.wait(20) == 0, log_path.read_text()
    finally:
        stop.set()
        if not writer.done():
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        for proc in (projector, worker):
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
        if worker.stderr:
            worker.stderr.close()

    entries = await whole_log(log)
    live = await stored_views(store)
    expected = replay(entries)
    assert canonical(live) == canonical(expected), diff_views(live, expected)[:20]
    # The feed announced every view's final state, and each task's views in
    # order, once each: no batch was announced twice or skipped.
    # Each shard's feed announces that shard's views (its parts of the queue,
    # stats and node views).
    feed = []
    for shard in log.keys.view_shards():
        rows = await r.xrange(log.keys.feed(shard))
        assert len(rows) < FEED_MAXLEN  # nothing trimmed yet, so nothing can be missing
        views = canonical(await stored_views(store.shard(shard)))
        if views["stats"] == _enc.encode(StatsView()):
            del views["stats"]  # a shard that counted nothing announced no global stats
        assert _feed_finals(rows) == views, shard
        feed += rows
    seen: dict[bytes, tuple[int, int]] = {}
    for _, fields in feed:
        if fields[b"entity"] == b"task":
            at = stream_id_key(_task.decode(fields[b"view"]).last_event_id)
            assert at > seen.get(fields[b"id"], (0, 0)), fields[b"id"]
            seen[fields[b"id"]] = at

    live_dump = await dump_namespace(log, "live")
    t1 = time.monotonic()
    rebuilt = await rebuild(log)
    rebuild_seconds = time.monotonic() - t1
    assert rebuilt.previous == "live" and rebuilt.views != "live"
    assert await dump_namespace(log, rebuilt.views) == live_dump

    print(
        f"\nprojector kill -9: {KILLS} kills in {kill_seconds:.1f}s over {len(entries):,} "
        f"entries ({submitted:,} tasks); kills that left a batch {landed}; rebuild "
        f"{rebuilt.entries:,} entries in {rebuild_seconds:.1f}s; views byte-equal "
        f"({len(live_dump):,} keys); {len(feed):,} feed entries"
    )
