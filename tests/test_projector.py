"""The projector against a real Redis: its views equal a replay of the log,
also after a crash between writing and acking."""

from __future__ import annotations

import msgspec

from eventcore.events import NodeHeartbeat, TaskProgress, TaskSpec
from eventcore.keys import Keys
from eventcore.log import EventLog, Submission
from eventcore.nodes import append_node_event
from projections.replay import Views, replay
from projections.runner import Projector
from projections.store import ViewStore
from tests.viewkit import feed_rows, view_keys
from tests.workerkit import fast_settings, make_worker, running, spec, wait_ended


async def _whole_log(log: EventLog) -> list:
    entries = []
    for stream in [*(log.keys.events(p) for p in log.keys.all_partitions()), log.keys.nodes()]:
        entries += await log.read(stream)
    return entries


async def _drain(projector: Projector) -> None:
    while await projector.step(block_ms=None):
        pass


async def _stored(store: ViewStore, task_ids) -> Views:
    return await store.load(task_ids)


def _same(a: Views, b: Views) -> None:
    enc = msgspec.msgpack.encode
    assert {t: enc(v) for t, v in a.tasks.items()} == {t: enc(v) for t, v in b.tasks.items()}
    assert a.nodes == b.nodes and a.queues == b.queues
    assert a.stats == b.stats and a.stats_by == b.stats_by


async def _workload(r, namespace: str) -> EventLog:
    settings = fast_settings(namespace, partitions=2)
    log = EventLog(r, Keys(namespace, 2))
    async with running(make_worker(log, settings, "w1", concurrency=8)):
        subs = await log.submit_many(
            [Submission(spec=spec("noop", i=i)) for i in range(40)]
            + [Submission(spec=spec("fail", retryable=False)) for _ in range(5)]
            + [Submission(spec=spec("sleep", seconds=0.2, steps=2)) for _ in range(3)]
        )
        for s in subs:
            await wait_ended(log, s.task_id)
    return log


async def test_views_equal_a_replay_of_the_log(r, namespace) -> None:
    log = await _workload(r, namespace)
    projector = Projector(log)
    await _drain(projector)
    entries = await _whole_log(log)
    expected = replay(entries)
    stored = await _stored(projector.store, expected.tasks)
    _same(stored, expected)
    assert expected.queues["q"].succeeded == 43 and expected.queues["q"].failed == 5
    assert stored.nodes["w1"].processed == 48
    marks = await projector.store.watermark()
    assert marks[log.keys.nodes()] == entries[-1].id
    feed = len(await feed_rows(log))
    assert feed > 48  # one entry per changed view per batch


async def test_incremental_batches_and_restart_equal_replay(r, namespace) -> None:
    log = await _workload(r, namespace)
    first = Projector(log, batch=7, consumer="p1")
    for _ in range(5):
        await first.step(block_ms=None)
    # more events arrive, then a new process takes over from the same group
    task_id = next(iter(replay(await _whole_log(log)).tasks))
    await log.append(TaskProgress(task_id=task_id, attempt=1, progress=0.5))
    await append_node_event(log, NodeHeartbeat(node="w1", free_slots=3))
    second = Projector(log, batch=7, consumer="p1")
    await _drain(second)
    expected = replay(await _whole_log(log))
    _same(await _stored(second.store, expected.tasks), expected)


class CrashAfterWrite(Projector):
    """Dies between writing a batch and acking it, as a kill -9 there would."""

    written = 0

    async def _ack(self, acks) -> None:
        self.written = len(await self.store.watermark())
        raise SystemExit("crash before ack")


async def test_crash_between_write_and_ack_changes_nothing(r, namespace) -> None:
    log = await _workload(r, namespace)
    crashing = CrashAfterWrite(log, batch=20, consumer="p1")
    try:
        await crashing.step()
    except SystemExit:
        pass
    assert crashing.written  # the batch's views and watermark were written, not acked
    # Restarted with the same consumer name: its pending batch is redelivered.
    await _drain(Projector(log, batch=20, consumer="p1"))
    expected = replay(await _whole_log(log))
    _same(await _stored(ViewStore(log), expected.tasks), expected)


class DiesBeforeWrite(Projector):
    """A projector whose process is killed after reading a batch, before writing it."""

    async def _write(self, entries, marks) -> None:
        raise SystemExit("killed before writing")


async def test_batch_read_by_a_killed_projector_is_applied_by_a_new_one(r, namespace) -> None:
    """Regression: a projector killed after reading a batch, before writing it,
    left the batch pending under its consumer name (host-pid), and the
    restarted process, with a new pid, read only new entries: the batch never
    reached the views. A new projector now takes over what its group left
    pending before reading anything new."""
    log = EventLog(r, Keys(namespace))
    for _ in range(3):
        await log.submit(TaskSpec(kind="noop", queue="q"))
    try:
        await DiesBeforeWrite(log, consumer="host-100").step()
    except SystemExit:
        pass
    await log.submit(TaskSpec(kind="noop", queue="q"))
    await _drain(Projector(log, consumer="host-101"))
    expected = replay(await _whole_log(log))
    assert len(expected.tasks) == 4
    _same(await _stored(ViewStore(log), expected.tasks), expected)


async def test_redelivered_batch_never_moves_the_watermark_back(r, namespace) -> None:
    """Regression: a batch written but not acked came back after a restart in
    smaller pieces, and each piece set the watermark to its own last id, below
    what the views already held: read-your-writes saw an entry applied, then
    not applied."""
    log = EventLog(r, Keys(namespace))
    for _ in range(3):
        await log.submit(TaskSpec(kind="noop", queue="q"))
    try:
        await CrashAfterWrite(log, batch=3, consumer="p1").step()
    except SystemExit:
        pass
    written = await ViewStore(log).watermark()
    again = Projector(log, batch=1, consumer="p1")
    assert await again.step(block_ms=None) == 1  # the first piece of the redelivered batch
    assert await again.store.watermark() == written
    await _drain(again)
    assert await again.store.watermark() == written


async def test_undecodable_entry_is_parked_and_counted(r, namespace) -> None:
    log = EventLog(r, Keys(namespace))
    await log.submit(TaskSpec(kind="noop", queue="q"))
    bad = (await r.xadd(log.keys.events(0), {"task": "x", "e": b"junk"})).decode()
    await log.submit(TaskSpec(kind="noop", queue="q"))
    projector = Projector(log)
    await _drain(projector)
    assert projector.parked == 1 and projector.applied == 2
    ((_, fields),) = await r.xrange(log.keys.parked())
    assert fields[b"entry"] == bad.encode()
    assert (await projector.store.queues())["q"].submitted == 2


async def test_verify_finds_a_hand_corrupted_view(r, namespace) -> None:
    from projections.store import ViewStore
    from projections.tools import verify

    log = await _workload(r, namespace)
    await _drain(Projector(log))
    store = ViewStore(log)
    assert await verify(log, store) == []
    some = next(iter(replay(await _whole_log(log)).tasks))
    view = await store.task(some)
    await r.set(
        store.task_key(some), msgspec.msgpack.encode(msgspec.structs.replace(view, attempt=99))
    )
    assert await verify(log, store) == [f"tasks[{some}]: differs"]
    await r.delete(store.task_key(some))
    assert await verify(log, store) == [f"tasks[{some}]: missing from the views"]


async def test_rebuild_switches_views_while_the_live_projector_goes_on(r, namespace) -> None:
    from projections.store import ViewStore, current_views
    from projections.tools import rebuild, verify

    log = await _workload(r, namespace)
    live = Projector(log, follow_pointer=True, batch=50)
    await _drain(live)
    assert await current_views(log) == "live"
    # corrupt the live views: the rebuild must not care
    some = next(iter(replay(await _whole_log(log)).tasks))
    await r.delete(live.store.task_key(some))
    result = await rebuild(log, batch=37)
    assert result.previous == "live" and result.entries > 0
    assert await current_views(log) == result.views
    assert await view_keys(log, "live") == []  # the old views are gone
    # new traffic after the switch reaches the new views through the live projector
    res = await log.submit(TaskSpec(kind="noop", queue="q"))
    await _drain(live)
    assert live.store.ns == result.views
    store = ViewStore(log, result.views)
    assert (await store.task(res.task_id)).status == "queued"
    assert await verify(log, store) == []


async def test_rebuild_announces_only_what_the_views_in_use_have_not(r, namespace) -> None:
    """A rebuild folds history the live views already announced on the feed:
    sending those old states again would look like steps backwards. Entries
    beyond the live views' watermark are announced."""
    from projections.tools import rebuild

    log = await _workload(r, namespace)
    live = Projector(log, batch=50)
    await _drain(live)
    feed_before = len(await feed_rows(log))
    result = await rebuild(log, batch=40)
    assert result.entries > 0
    assert len(await feed_rows(log)) == feed_before  # nothing announced twice
    # Entries the live views have not reached are announced by the rebuild.
    new = await log.submit(TaskSpec(kind="noop", queue="q"))
    await rebuild(log, batch=40)
    tail = await feed_rows(log)
    assert any(f[b"id"] == new.task_id.encode() for _, _, f in tail)
