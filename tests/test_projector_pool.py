"""Many projectors sharing the view shards: each shard folded by exactly one
at a time, taken over when its holder dies, never written by a holder whose
lease lapsed (paused in-process, and a real ``eventcore project`` stopped
with SIGSTOP), and the views of the whole log right however they were
shared."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from eventcore.events import NodeHeartbeat, TaskSpec
from eventcore.keys import Keys
from eventcore.log import EventLog, Submission
from eventcore.nodes import append_node_event
from projections.leases import ShardLease
from projections.pool import ProjectorPool, fair_share, lease_holders
from projections.read import caught_up
from projections.replay import replay
from projections.runner import Projector
from projections.store import LeaseLost, ViewStore
from projections.tools import diff_views, verify, whole_log
from tests.viewkit import canonical, feed_rows, stored_views

PARTITIONS = 4  # five shards: four partitions and the node one


def test_fair_share() -> None:
    assert [fair_share(5, n) for n in (0, 1, 2, 3, 5, 9)] == [5, 5, 3, 2, 1, 1]


async def _submit(log: EventLog, n: int) -> None:
    await log.submit_many([Submission(spec=TaskSpec(kind="noop", queue="q")) for _ in range(n)])
    await append_node_event(log, NodeHeartbeat(node="w1", free_slots=1))


async def _until(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        await asyncio.sleep(0.02)


async def _all_folded(log: EventLog) -> bool:
    store = ViewStore(log)
    for stream in [*(log.keys.events(p) for p in log.keys.all_partitions()), log.keys.nodes()]:
        last = await log.redis.xrevrange(stream, count=1)
        if last and not await caught_up(store, stream, last[0][0].decode()):
            return False
    return True


async def _assert_whole(log: EventLog) -> None:
    store = ViewStore(log)
    live = await stored_views(store)
    expected = replay(await whole_log(log))
    assert canonical(live) == canonical(expected), diff_views(live, expected)[:20]
    assert await verify(log, store) == []


@contextlib.asynccontextmanager
async def _running(pool: ProjectorPool) -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    task = asyncio.create_task(pool.run(stop))
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


async def test_two_projectors_share_the_shards_and_fold_everything(r, namespace) -> None:
    log = EventLog(r, Keys(namespace, PARTITIONS))
    await _submit(log, 100)
    a = ProjectorPool(log, name="a", lease_ms=600, block_ms=100)
    b = ProjectorPool(log, name="b", lease_ms=600, block_ms=100)
    async with _running(a), _running(b):
        # Once both count each other, they hold 3 and 2 shards.
        await _until(
            lambda: _true(sorted([len(a.held), len(b.held)]) == [2, 3]), 10, "a fair split"
        )
        assert not set(a.held) & set(b.held)
        holders = await lease_holders(log, "live")
        assert {h.split(":")[0] for h in holders.values() if h} == {"a", "b"}
        await _submit(log, 100)
        await _until(lambda: _all_folded(log), 20, "the views to catch up")
    await _assert_whole(log)
    assert await lease_holders(log, "live") == dict.fromkeys(log.keys.view_shards())


async def _true(value: bool) -> bool:
    return value


def _lapsed(lease: ShardLease) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await lease.holder() is None

    return check


async def test_a_dead_projectors_shards_are_taken_over(r, namespace) -> None:
    """A holder that dies (its loop gone, leases left behind) loses its
    shards once the leases lapse; the other projector takes them and folds
    what was left pending."""
    log = EventLog(r, Keys(namespace, PARTITIONS))
    await _submit(log, 50)
    dead = ProjectorPool(log, name="dead", lease_ms=500, block_ms=100)
    await dead.balance()  # alone: takes every shard
    assert len(dead.held) == len(log.keys.view_shards())
    for held in dead.held.values():  # it dies: no renewal, no release
        held.stop.set()
    await asyncio.gather(*(h.task for h in dead.held.values()))
    await _submit(log, 50)
    heir = ProjectorPool(log, name="heir", lease_ms=500, block_ms=100)
    async with _running(heir):
        await _until(lambda: _true(len(heir.held) == len(log.keys.view_shards())), 10, "takeover")
        await _until(lambda: _all_folded(log), 20, "the views to catch up")
    await _assert_whole(log)


class _Paused(Projector):
    """Holds its next batch, read but not written, until ``resume`` is set."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.holding = asyncio.Event()
        self.resume = asyncio.Event()

    async def _write(self, entries: Any, marks: dict[str, str]) -> None:
        if not self.holding.is_set():
            self.holding.set()
            await self.resume.wait()
        await super()._write(entries, marks)


async def test_a_holder_whose_lease_lapsed_writes_nothing(r, namespace) -> None:
    """Paused with a batch read (as a long GC or a stopped process would
    be), a holder's lease lapses and another projector takes the shard and
    folds the batch; the woken holder's write is refused, so nothing is
    written twice or out of order."""
    log = EventLog(r, Keys(namespace, 1))
    await _submit(log, 10)
    lease = ShardLease(log, "0", "live", holder="sleepy", ttl_ms=300)
    assert await lease.take()
    sleepy = _Paused(log, lease=lease, consumer="sleepy")
    step = asyncio.create_task(sleepy.step(block_ms=None))
    await asyncio.wait_for(sleepy.holding.wait(), 5)
    # The pause outlasts the lease: until its key has expired.
    await _until(_lapsed(lease), 5, "the paused holder's lease to lapse")
    heir = ProjectorPool(log, name="heir", lease_ms=2000, block_ms=100)
    async with _running(heir):
        await _until(lambda: _all_folded(log), 20, "the heir to fold the shard")
        feed_before = await feed_rows(log)
        sleepy.resume.set()
        with pytest.raises(LeaseLost):
            await step
        assert await feed_rows(log) == feed_before  # the woken holder wrote nothing
        await _submit(log, 5)
        await _until(lambda: _all_folded(log), 20, "the views to catch up")
    await _assert_whole(log)


def _spawn(redis_url: str, namespace: str, log_path: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTCORE_")}
    env.update(
        REDIS_URL=redis_url,
        EVENTCORE_NAMESPACE=namespace,
        EVENTCORE_PARTITIONS=str(PARTITIONS),
        EVENTCORE_PROJECTOR__LEASE_MS="900",
    )
    with log_path.open("ab") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "eventcore.cli", "project", "-v"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )


@pytest.mark.timeout(120)
async def test_a_stopped_projector_process_is_taken_over_and_writes_nothing_when_continued(
    r, redis_url: str, namespace: str, tmp_path: Path
) -> None:
    """Two real ``eventcore project`` processes share the shards; one is
    stopped (SIGSTOP) while tasks keep coming: the other takes its shards
    when their leases lapse and every view catches up; continued (SIGCONT),
    the stopped one finds its leases gone and writes nothing. The views are
    then the fold of the log, and the feed announced each task's changes in
    order, none twice."""
    log = EventLog(r, Keys(namespace, PARTITIONS))
    procs = [_spawn(redis_url, namespace, tmp_path / f"p{i}.log") for i in range(2)]
    try:
        await _submit(log, 100)
        await _until(lambda: _all_folded(log), 30, "two projectors to fold")

        async def split() -> bool:
            names = {h.split(":")[0] for h in (await lease_holders(log, "live")).values() if h}
            return len(names) == 2

        await _until(split, 20, "both projectors to hold shards")
        holders = await lease_holders(log, "live")
        stopped = next(p for p in procs if any(h and f"-{p.pid}:" in h for h in holders.values()))
        stopped.send_signal(signal.SIGSTOP)
        try:
            await _submit(log, 100)
            await _until(lambda: _all_folded(log), 30, "the other projector to take over")
            holders = await lease_holders(log, "live")
            assert all(h and f"-{stopped.pid}:" not in h for h in holders.values()), holders
        finally:
            stopped.send_signal(signal.SIGCONT)
        await _submit(log, 50)
        await _until(lambda: _all_folded(log), 30, "the views to catch up")
        # The continued one has noticed its leases are gone (and written nothing).
        woken_log = tmp_path / f"p{procs.index(stopped)}.log"

        async def noticed() -> bool:
            text = woken_log.read_text()
            return "lapsed" in text or "lost" in text

        await _until(noticed, 20, "the continued projector to notice its leases are gone")
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
    await _assert_whole(log)
    seen: dict[bytes, bytes] = {}
    for _, _, fields in await feed_rows(log):
        if fields[b"entity"] == b"task":
            view = fields[b"view"]
            assert seen.get(fields[b"id"]) != view, "a task's change was announced twice"
            seen[fields[b"id"]] = view
    logs = "".join((tmp_path / f"p{i}.log").read_text() for i in range(2))
    assert "Traceback" not in logs, logs[-3000:]
    woken = (tmp_path / f"p{procs.index(stopped)}.log").read_text()
    assert "lapsed" in woken or "lost" in woken, woken[-3000:]  # it noticed, and let go
