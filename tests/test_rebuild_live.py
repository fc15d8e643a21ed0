"""A rebuild under a running system: the live projector follows it to the new
views without stopping, and ``replay verify`` makes no false differences while
the log grows.

Regressions: a rebuild destroyed the group the live projector was blocked on
(or about to read), and the projector died of ``NOGROUP``; verify read the log
and then the views, so a heartbeat landing in between was a difference."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import msgspec
import pytest

from eventcore.events import NodeHeartbeat
from eventcore.keys import Keys
from eventcore.log import EventLog
from eventcore.log.spread import is_cluster
from eventcore.nodes import append_node_event
from projections.read import caught_up
from projections.replay import replay
from projections.runner import Projector
from projections.store import ViewStore, current_views, group_for
from projections.tools import diff_views, rebuild, verify, whole_log
from tests.replaykit import NODE, claim, cli, finish, submit, workload
from tests.test_projector_kill import PARTITIONS, spawn_projector
from tests.viewkit import canonical, feed_rows, stored_views

pytestmark = [pytest.mark.timeout(180)]


class Writer:
    """Appends until stopped, as a running system does: a few tasks, a node
    heartbeat, and some of the queued tasks run to an end, round after round."""

    def __init__(self, log: EventLog, seed: int = 7, pace: float = 0.001) -> None:
        self.log = log
        self.pace = pace
        self.rng = random.Random(seed)
        self.rounds = 0
        # A cap, so a rebuild does not chase a log that grows as fast as it folds.
        self.max_rounds = 5000
        self.stop = asyncio.Event()
        self.stopped = asyncio.Event()  # the last round is written

    async def halt(self) -> None:
        """Stop writing and wait until the round under way is written, so the
        log's ends read afterwards are its last ones."""
        self.stop.set()
        await asyncio.wait_for(self.stopped.wait(), 30)

    async def run(self) -> None:
        try:
            await self._rounds()
        finally:
            self.stopped.set()

    async def _rounds(self) -> None:
        while not self.stop.is_set() and self.rounds < self.max_rounds:
            await submit(self.log, self.rng.randint(1, 3))
            await append_node_event(
                self.log, NodeHeartbeat(node=NODE, free_slots=self.rng.randint(0, 8))
            )
            for k, entry in enumerate(await claim(self.log, self.rng.randint(0, 3))):
                await finish(self.log, entry, ok=k % 3 != 0)
            self.rounds += 1
            await asyncio.sleep(self.pace)  # let the projector and the test run too

    async def rounds_more(self, n: int, timeout: float = 90) -> None:
        """Until ``n`` more rounds were written."""
        # A fast machine may reach the cap before the last rebuild is done:
        # then the traffic is over, and there is nothing more to wait for.
        target = min(self.rounds + n, self.max_rounds)
        await until(lambda: _true(self.rounds >= target), timeout, "the writer")


async def _true(value: bool) -> bool:
    return value


async def until(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def writing(log: EventLog, pace: float = 0.001) -> AsyncIterator[Writer]:
    writer = Writer(log, pace=pace)
    task = asyncio.create_task(writer.run())
    try:
        yield writer
    finally:
        writer.stop.set()
        await asyncio.wait_for(task, 30)


@contextlib.asynccontextmanager
async def projecting(projector: Projector) -> AsyncIterator[asyncio.Task[None]]:
    """``projector.run`` in the background, as ``eventcore project`` runs it."""
    stop = asyncio.Event()
    task = asyncio.create_task(projector.run(stop, block_ms=200))
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def wait_caught_up(log: EventLog, timeout: float = 60) -> ViewStore:
    """Until the views in use have applied every stream's last entry."""
    store = ViewStore(log, await current_views(log))
    for stream in [*(log.keys.events(p) for p in log.keys.all_partitions()), log.keys.nodes()]:
        ((tip, _),) = await log.redis.xrevrange(stream, count=1)

        async def done(stream: str = stream, tip: str = tip.decode()) -> bool:
            return await caught_up(store, stream, tip)

        await until(done, timeout, f"the projector to reach the end of {stream}")
    return store


async def assert_equal_to_replay(log: EventLog, store: ViewStore) -> None:
    live = await stored_views(store)
    expected = replay(await whole_log(log))
    assert canonical(live) == canonical(expected), diff_views(live, expected)[:20]


async def assert_only(log: EventLog, view_ns: str) -> None:
    """Only ``view_ns`` is left: no key of another view namespace, and only
    its projector group on the log streams."""
    names = set()
    for shard in log.keys.view_shards():
        prefix = log.keys.feed(shard).removesuffix("feed")
        async for k in log.redis.scan_iter(match=f"{prefix}*", count=1000):
            names.add(k.decode().removeprefix(prefix).split(":", 1)[0])
    assert names <= {view_ns, "feed"}, names
    for stream in [*(log.keys.events(p) for p in log.keys.all_partitions()), log.keys.nodes()]:
        found = {g["name"].decode() for g in await log.redis.xinfo_groups(stream)}
        assert found == {group_for(view_ns)}, (stream, found)


@pytest.mark.parametrize("pace", [0.001, 0.05], ids=["busy", "idle"])
async def test_a_running_projector_follows_rebuilds_under_traffic(r, namespace, pace) -> None:
    """Busy: the projector is mostly folding when a rebuild switches. Idle: it
    is mostly blocked reading its group when the rebuild destroys it."""
    log = EventLog(r, Keys(namespace, PARTITIONS))
    await workload(log, 20)
    projector = Projector(log, follow_pointer=True, batch=50, consumer="live-1")
    results = []
    async with projecting(projector) as running, writing(log, pace) as writer:
        await writer.rounds_more(10)
        for _ in range(3):
            results.append(await rebuild(log, batch=40))
            await writer.rounds_more(10)
            assert not running.done(), running.exception()
        await writer.halt()
        store = await wait_caught_up(log)
    assert store.ns == results[-1].views == projector.store.ns
    assert getattr(projector, "switches", 3) == 3
    await assert_equal_to_replay(log, store)
    await assert_only(log, store.ns)


async def test_the_project_command_follows_a_rebuild_command(
    r, redis_url: str, namespace: str, tmp_path: Path
) -> None:
    log = EventLog(r, Keys(namespace, PARTITIONS))
    env = {
        "REDIS_URL": redis_url,
        "EVENTCORE_NAMESPACE": namespace,
        "EVENTCORE_PARTITIONS": str(PARTITIONS),
    }
    await workload(log, 20)
    log_path = tmp_path / "projector.log"
    log_path.touch()
    projector = spawn_projector(redis_url, namespace, log_path)
    try:
        await until(lambda: _true(": views " in log_path.read_text()), 20, "the projector")
        async with writing(log, pace=0.05) as writer:
            await writer.rounds_more(10)
            for _ in range(2):
                res = await asyncio.to_thread(cli, "replay", "rebuild", env=env)
                assert res.returncode == 0, res.stderr
                await writer.rounds_more(10)
                assert projector.poll() is None, log_path.read_text()
                verified = await asyncio.to_thread(cli, "replay", "verify", env=env)
                assert verified.returncode == 0, verified.stdout + verified.stderr
                assert "equal a replay" in verified.stdout
        store = await wait_caught_up(log)
        assert projector.poll() is None, log_path.read_text()
        assert store.ns != "live"
        await assert_equal_to_replay(log, store)
        await assert_only(log, store.ns)
        projector.send_signal(signal.SIGTERM)
        assert projector.wait(20) == 0, log_path.read_text()
    finally:
        if projector.poll() is None:
            projector.kill()
        projector.wait(10)
    assert "NOGROUP" not in log_path.read_text()


async def test_verify_while_the_log_grows_reports_equal_and_still_finds_corruption(
    r, namespace
) -> None:
    log = EventLog(r, Keys(namespace, PARTITIONS))
    await workload(log, 12, leave=0)
    projector = Projector(log, follow_pointer=True, batch=50, consumer="live-1")
    async with projecting(projector), writing(log) as writer:
        await writer.rounds_more(5)
        store = ViewStore(log)
        for _ in range(20):
            assert await verify(log, store) == []
        done = [t for t, v in (await stored_views(store)).tasks.items() if v.status == "succeeded"]
        some = done[0]  # ended: nothing the writer does touches it again
        view = await store.task(some)
        await r.set(
            store.task_key(some),
            msgspec.msgpack.encode(msgspec.structs.replace(view, attempt=99)),
        )
        for _ in range(3):
            assert await verify(log, store) == [f"tasks[{some}]: differs"]
        await r.delete(store.task_key(some))
        assert await verify(log, store) == [f"tasks[{some}]: missing from the views"]


async def test_a_lost_group_is_recreated_at_the_views_watermark(r, namespace) -> None:
    """A projector whose group vanished (destroyed by hand, or by a rebuild
    whose pointer it does not follow) carries on from its views' watermark:
    nothing applied twice, nothing announced twice, nothing skipped."""
    log = EventLog(r, Keys(namespace, PARTITIONS))
    await workload(log, 8)
    projector = Projector(log, batch=20)
    while await projector.step(block_ms=None):
        pass
    feed = len(await feed_rows(log))
    await _destroy(log, "projector")
    assert await projector.step(block_ms=None) == 0
    assert len(await feed_rows(log)) == feed  # nothing applied again
    await submit(log, 2)
    await append_node_event(log, NodeHeartbeat(node=NODE, free_slots=1))
    while await projector.step(block_ms=None):
        pass
    await assert_equal_to_replay(log, projector.store)
    # While blocked on it, too.
    reading = asyncio.create_task(projector.step(block_ms=5000))
    await until(lambda: _blocked(r), 10, "the projector to block")
    await _destroy(log, "projector")
    await submit(log, 1)
    assert await asyncio.wait_for(reading, 10) >= 0
    while await projector.step(block_ms=None):
        pass
    await assert_equal_to_replay(log, projector.store)


async def _destroy(log: EventLog, group: str) -> None:
    # One command per stream (they span slots on a cluster): the projector
    # notices the first one missing either way.
    async with log.redis.pipeline(transaction=False) as pipe:
        for stream in [*(log.keys.events(p) for p in log.keys.all_partitions())]:
            pipe.xgroup_destroy(stream, group)
        pipe.xgroup_destroy(log.keys.nodes(), group)
        await pipe.execute()


async def _blocked(r) -> bool:
    """Whether some client (of any master, on a cluster) waits in XREADGROUP."""
    if is_cluster(r):
        replies = (await r.client_list(target_nodes=r.PRIMARIES)).values()
        clients = [c for reply in replies for c in reply]
    else:
        clients = await r.client_list()
    return any(c.get("cmd") == "xreadgroup" for c in clients)
