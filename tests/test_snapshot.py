"""Snapshots, trimming behind them, and rebuild / verify starting from them,
against a real Redis."""

from __future__ import annotations

import io
import os

import pytest
from redis.exceptions import ResponseError

from eventcore.errors import EventcoreError
from eventcore.events import (
    NodeHeartbeat,
    TaskCancelled,
    TaskClaimed,
    TaskProgress,
    TaskStarted,
    TaskSucceeded,
)
from eventcore.keys import Keys
from eventcore.log import EventLog
from eventcore.nodes import append_node_event
from projections.progress import Progress
from projections.replay import Views
from projections.runner import Projector
from projections.scripts import ViewScripts
from projections.snapshot import latest_head, load_snapshot, take_snapshot
from projections.store import ViewStore, current_views
from projections.tools import expected_views, log_after, rebuild, verify
from projections.trim import trim_log, trim_marks
from tests.replaykit import NODE, assert_same, claim, cli, finish, replayed, submit, workload


async def _drain(projector: Projector) -> None:
    while await projector.step(block_ms=None):
        pass


async def _stored(store: ViewStore, task_ids) -> Views:
    return await store.load(task_ids)


async def test_snapshot_is_the_fold_of_the_log_and_grows_from_the_last_one(r, namespace) -> None:
    log = EventLog(r, Keys(namespace, 2))
    await workload(log)
    first = await take_snapshot(log, batch=5)
    head, views = await load_snapshot(log)
    assert head == first and first.tasks == 12
    assert_same(views, await replayed(log))
    assert set(first.watermark) == {*(log.keys.events(p) for p in range(2)), log.keys.nodes()}

    more = await workload(log, 4, leave=0)
    await log.append(TaskProgress(task_id=more[0], attempt=1, progress=0.5))
    second = await take_snapshot(log, batch=3)
    assert second.tasks == 16 and int(second.id) > int(first.id)
    assert second.entries == len(await _all_entries(log))
    assert_same((await load_snapshot(log))[1], await replayed(log))
    # only the latest snapshot is kept, and nothing is left half-written
    assert not await r.exists(log.keys.snapshot(first.id))
    assert sorted(await _keys(r, log.keys.snapshot("*"))) == sorted(
        [log.keys.snapshot(second.id).encode(), log.keys.snapshot_pointer().encode()]
    )


async def _keys(r, pattern: str) -> list[bytes]:
    # SCAN, not KEYS: redis-py's cluster client scans every master.
    return [k async for k in r.scan_iter(match=pattern)]


async def _all_entries(log: EventLog) -> list:
    return await log_after(log, {})


async def test_snapshot_of_an_empty_log(r, namespace) -> None:
    log = EventLog(r, Keys(namespace))
    head = await take_snapshot(log)
    assert head.tasks == 0 and head.watermark == {}
    assert (await latest_head(log)) == head
    result = await trim_log(log)
    assert result.streams == [] and result.done_pruned == 0


async def test_publish_refuses_a_stale_pointer_or_an_incomplete_staging_hash(r, namespace) -> None:
    log = EventLog(r, Keys(namespace))
    k = log.keys
    await r.hset(k.snapshot_partial("5"), mapping={"head": b"x", "t:a": b"y"})
    before = sorted(await _keys(r, f"{namespace}:*"))
    for args in (["5", 3, ""], ["5", 2, "4"], ["", 2, ""]):
        with pytest.raises(ResponseError, match="eventcore publish_snapshot"):
            await ViewScripts(r).raw(
                "publish_snapshot",
                [k.snapshot_pointer(), k.snapshot_partial("5"), k.snapshot("5"), k.snapshot("5")],
                args,
            )
    assert sorted(await _keys(r, f"{namespace}:*")) == before  # nothing written


async def test_trim_script_refuses_a_bad_limit_and_writes_nothing(r, namespace) -> None:
    log = EventLog(r, Keys(namespace))
    await submit(log, 3)
    stream = log.keys.events(0)
    with pytest.raises(ResponseError, match="eventcore trim_stream"):
        await ViewScripts(r).raw("trim_stream", [stream, log.keys.trim_mark(stream)], ["x"])
    assert await r.xlen(stream) == 3 and not await r.exists(log.keys.trim_mark(stream))


async def test_trim_without_a_snapshot_is_refused(r, namespace) -> None:
    log = EventLog(r, Keys(namespace))
    await submit(log, 2)
    with pytest.raises(Exception, match="no snapshot to trim behind"):
        await trim_log(log)
    assert await r.xlen(log.keys.events(0)) == 2


async def test_snapshot_trim_append_rebuild_equals_the_live_projector(r, namespace) -> None:
    """The brief's scenario: snapshot, trim, more traffic, rebuild: the rebuilt
    views equal the ones the live projector built all along."""
    log = EventLog(r, Keys(namespace, 2))
    await workload(log, 20)
    live = Projector(log, follow_pointer=True, batch=7)
    await _drain(live)
    head = await take_snapshot(log, batch=4)
    result = await trim_log(log)
    # the projector read and acked everything: each stream keeps only its last entry
    for s in result.streams:
        assert s.minid == head.watermark[s.stream] and s.held_by == ""
        assert await r.xlen(s.stream) == 1
    assert (await trim_marks(log)) == {s.stream: s.minid for s in result.streams}

    # more traffic after the trim: tasks that were queued at the snapshot end now
    tasks = await submit(log, 5)
    for entry in await claim(log, 10):
        await finish(log, entry)
    await append_node_event(log, NodeHeartbeat(node=NODE, free_slots=1))
    await _drain(live)
    assert live.store.ns == "live"
    all_ids = list((await load_snapshot(log))[1].tasks) + tasks
    before = await _stored(live.store, all_ids)
    assert before.tasks[tasks[0]].status == "succeeded"

    rebuilt = await rebuild(log, batch=5)
    assert rebuilt.snapshot == head.id and rebuilt.seeded == 20
    assert await current_views(log) == rebuilt.views
    store = ViewStore(log, rebuilt.views)
    assert_same(await _stored(store, all_ids), before)
    assert await verify(log, store) == []
    # the rebuilt views' watermark carries on from the snapshot's
    marks = await store.watermark()
    for stream in head.watermark:
        assert int(marks[stream].split("-")[0]) >= int(head.watermark[stream].split("-")[0])
    # and the live projector moved to them and keeps going
    extra = await submit(log, 1)
    await _drain(live)
    assert live.store.ns == rebuilt.views
    assert (await store.task(extra[0])).status == "queued"


async def test_trim_keeps_pending_and_unread_entries(r, namespace) -> None:
    """Nothing a consumer group has not read or not acked is trimmed: a
    group with pending entries, a group that has read nothing yet, and a work
    entry that is claimed but not acked all survive, and the task held still
    settles afterwards."""
    log = EventLog(r, Keys(namespace))
    stream = log.keys.events(0)
    await workload(log, 6, leave=2)
    held = await claim(log, 1, consumer="slowpoke")  # claimed, never acked (yet)
    assert len(held) == 1
    ids = [eid.decode() for eid, _ in await r.xrange(stream)]
    # "slow" read two entries from ids[3] on and acked neither
    await r.xgroup_create(stream, "slow", id=ids[3])
    got = await r.xreadgroup("slow", "s1", {stream: ">"}, count=2)
    assert [e[0].decode() for e in got[0][1]] == ids[4:6]
    # "audit" was created at ids[8] and has read nothing
    await r.xgroup_create(stream, "audit", id=ids[8])
    await take_snapshot(log)

    first = await trim_log(log)
    (s,) = [x for x in first.streams if x.stream == stream]
    assert s.held_by == "slow" and s.minid == ids[4] and s.trimmed == 4
    assert [eid.decode() for eid, _ in await r.xrange(stream)] == ids[4:]

    await r.xack(stream, "slow", *ids[4:6])
    second = await trim_log(log)
    (s,) = [x for x in second.streams if x.stream == stream]
    assert s.held_by == "slow" and s.minid == ids[5]  # its last-delivered id
    await r.xgroup_destroy(stream, "slow")
    third = await trim_log(log)
    (s,) = [x for x in third.streams if x.stream == stream]
    assert s.held_by == "audit" and s.minid == ids[8]
    assert [eid.decode() for eid, _ in await r.xrange(stream)] == ids[8:]

    # the held work entry is still pending and settles normally after the trim
    (entry,) = held
    pending = await r.xpending(entry.stream, log.group)
    assert pending["pending"] == 1
    await finish(log, entry, consumer="slowpoke")
    assert await log.ended_as(entry.task_id) == "task.succeeded"


async def test_trim_waits_for_a_lagging_projector(r, namespace) -> None:
    log = EventLog(r, Keys(namespace))
    await workload(log, 8)
    ids = [eid.decode() for eid, _ in await r.xrange(log.keys.events(0))]
    lagging = Projector(log, batch=5)
    await lagging.step()  # read and acked the first five entries of each stream only
    await take_snapshot(log)
    res = await trim_log(log)
    (s,) = [x for x in res.streams if x.stream == log.keys.events(0)]
    assert s.held_by == "projector" and s.minid == ids[4]
    await _drain(lagging)
    expected = await expected_views(log)
    assert_same(await _stored(lagging.store, expected.tasks), expected)


async def test_done_is_pruned_only_for_tasks_whose_events_are_all_trimmed(r, namespace) -> None:
    log = EventLog(r, Keys(namespace))
    old = await submit(log, 3)
    entries = await claim(log, 3)
    await finish(log, entries[0])
    await finish(log, entries[1], ok=False)
    held = entries[2]  # claimed, not settled: no outcome yet
    await log.append(
        TaskClaimed(task_id=held.task_id, node=NODE, attempt=1, deliveries=1, entry_id=held.id)
    )
    await take_snapshot(log)
    recent = await submit(log, 1)
    (late,) = await claim(log, 1)
    await finish(log, late)  # ended after the snapshot: its events are kept

    res = await trim_log(log)
    assert res.done_pruned == 2
    assert await log.ended_as(old[0]) is None and await log.ended_as(old[1]) is None
    assert await log.ended_as(recent[0]) == "task.succeeded"
    # the held task still ends exactly once
    await log.finish(
        NODE,
        held,
        TaskStarted(task_id=held.task_id, node=NODE, attempt=1),
        TaskSucceeded(task_id=held.task_id, node=NODE, attempt=1),
    )
    assert await log.ended_as(held.task_id) == "task.succeeded"
    assert (await trim_log(log, prune=False)).done_pruned == 0


async def test_a_task_with_a_leftover_work_entry_keeps_its_outcome(r, namespace) -> None:
    """A duplicate work entry (a re-sent submit) may still be claimed: its
    task's outcome must stay recorded so that settle answers stale."""
    log = EventLog(r, Keys(namespace))
    (tid,) = await submit(log, 1)
    (entry,) = await claim(log, 1)
    await finish(log, entry)
    work = log.keys.work(0, "q", "normal")
    await r.xadd(work, {"task": tid, "attempt": "1", "spec": entry.spec})
    await take_snapshot(log)
    res = await trim_log(log)
    assert res.done_pruned == 0 and await log.ended_as(tid) == "task.succeeded"
    (dup,) = await claim(log, 1)
    claimed = TaskClaimed(task_id=tid, node=NODE, attempt=1, deliveries=1, entry_id=dup.id)
    stale = await log.finish(NODE, dup, claimed, TaskCancelled(task_id=tid, node=NODE))
    assert not stale.ok and "task already ended" in stale.stale_reason


def test_progress_draws_only_on_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    now = [0.0]
    tty = Tty()
    with Progress("rebuilding", total=200, stream=tty, clock=lambda: now[0]) as bar:
        now[0] = 1.0
        bar.update(50)
        now[0] = 1.1
        bar.update(60)  # within the redraw interval: not drawn
        now[0] = 2.0
        bar.update(100)
    lines = tty.getvalue().split("\r")
    assert lines[1].startswith("rebuilding  [######------------------]  25%  50/200 entries  50/s")
    assert "50%  100/200 entries  50/s  2.0s" in lines[-1] and lines[-1].endswith("\n")
    assert len(lines) == 4  # two updates drawn, then the final line

    plain = io.StringIO()
    with Progress("verifying", stream=plain) as bar:
        bar.update(10)
    assert plain.getvalue() == "" and bar.done == 10
    assert "verifying  10 entries" in bar.line()


def test_snapshot_trim_and_rebuild_commands(redis_url: str) -> None:
    ns = "cli" + os.urandom(4).hex()
    env = {"REDIS_URL": redis_url, "EVENTCORE_NAMESPACE": ns}
    refused = cli("events", "trim", env=env)
    assert refused.returncode == 1 and "no snapshot" in refused.stderr
    assert "Traceback" not in refused.stderr
    for _ in range(3):
        assert cli("submit", "noop", "--queue", "cpu-light", env=env).returncode == 0
    snap = cli("replay", "snapshot", env=env)
    assert snap.returncode == 0, snap.stderr
    assert "snapshot " in snap.stdout and "3 task views" in snap.stdout
    trim = cli("events", "trim", "--before", "2999-01-01T00:00:00Z", env=env)
    assert trim.returncode == 0, trim.stderr
    assert f"{ns}:{{p0}}:events: 2 entries trimmed" in trim.stdout
    rebuilt = cli("replay", "rebuild", env=env)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "on top of snapshot" in rebuilt.stdout and "(3 task views)" in rebuilt.stdout
    ok = cli("replay", "verify", env=env)
    assert ok.returncode == 0 and "equal a replay" in ok.stdout, ok.stdout + ok.stderr
    assert rebuilt.stderr == ""  # no terminal: no progress drawn


async def test_a_trimmed_log_without_its_snapshot_is_refused(r, namespace) -> None:
    """Replaying a trimmed log from its first remaining entry would give views
    that silently lack the trimmed tasks: verify and rebuild refuse instead."""
    log = EventLog(r, Keys(namespace))
    await workload(log, 4)
    await take_snapshot(log)
    await trim_log(log)
    await r.delete(log.keys.snapshot_pointer())
    for call in (verify(log, ViewStore(log)), rebuild(log)):
        with pytest.raises(EventcoreError, match="trimmed but there is no snapshot"):
            await call
    assert await current_views(log) == "live"


async def test_trim_before_a_point_keeps_recent_history(r, namespace) -> None:
    log = EventLog(r, Keys(namespace))
    await workload(log, 6)
    ids = [eid.decode() for eid, _ in await r.xrange(log.keys.events(0))]
    await take_snapshot(log)
    res = await trim_log(log, before=ids[5])
    (s,) = [x for x in res.streams if x.stream == log.keys.events(0)]
    assert (s.minid, s.trimmed, s.held_by) == (ids[5], 5, "")
    # a point after the watermark changes nothing: the snapshot still bounds it
    res = await trim_log(log, before="99999999999999-0")
    (s,) = [x for x in res.streams if x.stream == log.keys.events(0)]
    assert s.minid == ids[-1]


async def test_a_projector_on_empty_views_starts_from_the_snapshot(
    redis_url: str, r, namespace
) -> None:
    import asyncio
    import signal
    import subprocess
    import sys

    log = EventLog(r, Keys(namespace))
    await workload(log, 8, leave=2)
    live = Projector(log, ViewStore(log))
    await _drain(live)
    await take_snapshot(log)
    await submit(log, 1)  # after the snapshot; the projector must add it
    await _drain(live)
    await trim_log(log)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTCORE_")}
    env.update({"REDIS_URL": redis_url, "EVENTCORE_NAMESPACE": namespace})
    proc = subprocess.Popen(
        [sys.executable, "-m", "eventcore.cli", "project", "--views", "fresh"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    fresh = ViewStore(log, "fresh")
    try:
        wanted = await ViewStore(log).watermark()
        for _ in range(200):
            if await fresh.watermark() == wanted:
                break
            await asyncio.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert "seeded from the latest snapshot (8 tasks)" in err, err
    assert await verify(log, fresh) == []
