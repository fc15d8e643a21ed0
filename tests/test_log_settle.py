"""Ending held work: terminal, retry and dead-letter writes are atomic with the
ack, and a worker that lost its lease cannot change the outcome."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio import Redis

from eventcore.errors import ScriptArgumentError
from eventcore.events import (
    ErrorInfo,
    TaskCancelled,
    TaskClaimed,
    TaskDeadLettered,
    TaskFailed,
    TaskProgress,
    TaskRetryScheduled,
    TaskSpec,
    TaskStarted,
    TaskSucceeded,
)
from eventcore.keys import Keys
from eventcore.log import CancelOutcome, EventLog, Settlement, groups
from eventcore.log.groups import WorkEntry

SPEC = TaskSpec(kind="noop", queue="cpu-light")


async def _claim_one(log: EventLog, consumer: str = "w1") -> WorkEntry:
    res = await log.submit(SPEC)
    p = log.keys.partition(res.task_id)
    stream = log.keys.work(p, "cpu-light", "normal")
    await groups.ensure_group(log.redis, stream, log.group)
    (entry,) = await groups.read_group(log.redis, log.group, consumer, [stream], count=10)
    assert entry.task_id == res.task_id
    return entry


def _run_events(entry: WorkEntry, node: str = "w1") -> tuple:
    t = entry.task_id
    return (
        TaskClaimed(task_id=t, node=node, attempt=1, deliveries=1, entry_id=entry.id),
        TaskStarted(task_id=t, node=node, attempt=1),
    )


async def _types(log: EventLog, task_id: str) -> list[type]:
    return [type(e.event) for e in await log.history(task_id)]


async def test_finish_appends_events_and_acks(log: EventLog, r: Redis) -> None:
    entry = await _claim_one(log)
    done = TaskSucceeded(task_id=entry.task_id, node="w1", attempt=1, result={"ok": True})
    (res,) = await log.settle("w1", [Settlement(entry, (*_run_events(entry), done))])
    assert res.ok and res.event_id
    assert (await _types(log, entry.task_id))[1:] == [TaskClaimed, TaskStarted, TaskSucceeded]
    summary = await groups.pending_summary(r, entry.stream, log.group)
    assert summary.count == 0
    assert await r.xlen(entry.stream) == 0  # acked entries are deleted
    assert await log.ended_as(entry.task_id) == "task.succeeded"


async def test_second_terminal_is_stale(log: EventLog, r: Redis) -> None:
    entry = await _claim_one(log)
    t = entry.task_id
    ok = TaskSucceeded(task_id=t, node="w1", attempt=1)
    (first,) = await log.settle("w1", [Settlement(entry, (ok,))])
    (again,) = await log.settle("w1", [Settlement(entry, (ok,))])
    assert first.ok and not again.ok and "no longer pending" in again.stale_reason
    assert (await _types(log, t)).count(TaskSucceeded) == 1


async def test_lost_lease_result_is_stale_and_changes_nothing(log: EventLog, r: Redis) -> None:
    entry = await _claim_one(log, "zombie")
    await asyncio.sleep(0.05)
    taken = await groups.autoclaim(r, entry.stream, log.group, "rescuer", min_idle_ms=10)
    assert [e.id for e in taken.entries] == [entry.id]
    assert taken.entries[0].deliveries == 2
    # The zombie wakes up and reports: refused, nothing written.
    late = TaskSucceeded(task_id=entry.task_id, node="zombie", attempt=1)
    (res,) = await log.settle("zombie", [Settlement(entry, (late,))])
    assert not res.ok and "lease lost to rescuer" in res.stale_reason
    assert TaskSucceeded not in await _types(log, entry.task_id)
    # The rescuer's result counts.
    mine = TaskFailed(
        task_id=entry.task_id, node="rescuer", attempt=2, error=ErrorInfo(type="E", message="m")
    )
    (res,) = await log.settle("rescuer", [Settlement(taken.entries[0], (mine,))])
    assert res.ok
    assert await log.ended_as(entry.task_id) == "task.failed"


async def test_retry_moves_task_to_delayed_set_with_next_attempt(
    log: EventLog, r: Redis, keys: Keys
) -> None:
    entry = await _claim_one(log)
    run_at = time.time() + 60
    retry = TaskRetryScheduled(task_id=entry.task_id, attempt=2, run_at=run_at, delay=60)
    (res,) = await log.settle("w1", [Settlement(entry, (retry,))])
    assert res.ok
    p = keys.partition(entry.task_id)
    assert await r.zscore(keys.delayed(p), entry.task_id) == int(run_at * 1000)
    assert await r.xlen(entry.stream) == 0
    assert await log.ended_as(entry.task_id) is None
    assert await log.release_due(now=run_at + 1) == 1
    (again,) = await groups.read_group(r, log.group, "w1", [entry.stream], count=5)
    assert again.task_id == entry.task_id and again.attempt == 2
    assert again.submitted.spec == SPEC


async def test_dead_letter_parks_entry_with_reason(log: EventLog, r: Redis, keys: Keys) -> None:
    entry = await _claim_one(log)
    dead = TaskDeadLettered(
        task_id=entry.task_id, deliveries=5, reason="delivered 5 times", entry_id=entry.id
    )
    (res,) = await log.settle("w1", [Settlement(entry, (dead,))])
    assert res.ok
    p = keys.partition(entry.task_id)
    ((_, fields),) = await r.xrange(keys.dead_letters(p))
    assert fields[b"task"] == entry.task_id.encode()
    assert fields[b"entry"] == entry.id.encode()
    assert fields[b"reason"] == b"delivered 5 times"
    assert fields[b"spec"] == entry.spec
    assert await log.ended_as(entry.task_id) == "task.dead_lettered"


async def test_batch_settle_mixes_outcomes_in_one_call(log: EventLog, r: Redis) -> None:
    entries = [await _claim_one(log) for _ in range(3)]
    a, b, c = entries
    items = [
        Settlement(a, (TaskSucceeded(task_id=a.task_id, node="w1", attempt=1),)),
        Settlement(b, (TaskRetryScheduled(task_id=b.task_id, attempt=2, run_at=1.0, delay=0),)),
        Settlement(c, (TaskCancelled(task_id=c.task_id, node="w1", reason="asked"),)),
    ]
    results = await log.settle("w1", items)
    assert all(x.ok for x in results)
    assert await log.ended_as(a.task_id) == "task.succeeded"
    assert await log.ended_as(b.task_id) is None
    assert await log.ended_as(c.task_id) == "task.cancelled"


async def test_settlement_must_end_in_an_outcome(log: EventLog) -> None:
    entry = await _claim_one(log)
    progress = TaskProgress(task_id=entry.task_id, attempt=1, progress=0.5)
    with pytest.raises(ValueError, match="must end with"):
        await log.settle("w1", [Settlement(entry, (progress,))])
    other = TaskSucceeded(task_id="someone-else", node="w1", attempt=1)
    with pytest.raises(ValueError, match="another task"):
        await log.settle("w1", [Settlement(entry, (other,))])


async def test_settle_script_refuses_bad_args_and_writes_nothing(
    log: EventLog, r: Redis, keys: Keys
) -> None:
    entry = await _claim_one(log)
    # the entry's own partition: on a cluster every key of a call shares its slot
    p = keys.partition(entry.task_id)
    before = await r.xlen(keys.events(p))
    k = [
        keys.events(p),
        keys.done(p),
        keys.cancels(p),
        keys.delayed(p),
        keys.delayed_items(p),
        keys.dead_letters(p),
        entry.stream,
    ]
    good = [entry.task_id, entry.id, "t", "task.succeeded", 0, "", 1, b"ev"]
    bad = [
        ["workers", "w1", 1, entry.task_id, entry.id, "x", "o", 0, "", 1, b"ev"],  # bad action
        ["workers", "w1", 1, entry.task_id, entry.id, "t", "", 0, "", 1, b"ev"],  # no outcome
        ["workers", "w1", 1, entry.task_id, entry.id, "r", "", "later", "h|", 1, b"ev"],
        ["workers", "w1", 1, entry.task_id, entry.id, "t", "o", 0, "", 0],  # no events
        ["workers", "w1", 1, *good, "extra"],
        ["", "w1", 1, *good],
        # second item bad: the first must not be written
        ["workers", "w1", 2, *good, entry.task_id, entry.id, "t", "o", 0, "", 2, b"ev"],
    ]
    for args in bad:
        keys_ = [*k, entry.stream] if args[2] == 2 else k
        with pytest.raises(ScriptArgumentError):
            await log.scripts.raw("settle", keys_, args)
    assert await r.xlen(keys.events(p)) == before
    assert (await groups.pending_summary(r, entry.stream, log.group)).count == 1


async def test_cancel_delayed_task_cancels_it_at_once(log: EventLog, r: Redis, keys: Keys) -> None:
    res = await log.submit(SPEC, run_at=time.time() + 60)
    out = await log.request_cancel(res.task_id, reason="user")
    assert out.outcome is CancelOutcome.CANCELLED
    assert await log.ended_as(res.task_id) == "task.cancelled"
    assert await log.release_due(now=time.time() + 120) == 0
    again = await log.request_cancel(res.task_id)
    assert again.outcome is CancelOutcome.ALREADY_DONE and again.ended_as == "task.cancelled"


async def test_cancel_queued_task_is_flagged_for_the_claimer(log: EventLog) -> None:
    entry = await _claim_one(log)
    out = await log.request_cancel(entry.task_id, reason="user", by="alice")
    assert out.outcome is CancelOutcome.REQUESTED and out.event_id
    assert await log.cancel_requested([entry.task_id, "other"]) == {entry.task_id}
    cancelled = TaskCancelled(task_id=entry.task_id, node="w1", reason="user")
    (res,) = await log.settle("w1", [Settlement(entry, (cancelled,))])
    assert res.ok
    assert await log.cancel_requested([entry.task_id]) == set()  # forgotten once ended


async def test_cancel_of_finished_task_writes_nothing(log: EventLog, r: Redis, keys: Keys) -> None:
    entry = await _claim_one(log)
    await log.settle(
        "w1", [Settlement(entry, (TaskSucceeded(task_id=entry.task_id, node="w1", attempt=1),))]
    )
    before = await r.xlen(keys.events(0))
    out = await log.request_cancel(entry.task_id)
    assert out.outcome is CancelOutcome.ALREADY_DONE and out.ended_as == "task.succeeded"
    assert await r.xlen(keys.events(0)) == before


async def test_finish_is_settle_of_one(log: EventLog) -> None:
    entry = await _claim_one(log)
    res = await log.finish(
        "w1", entry, *_run_events(entry), TaskSucceeded(task_id=entry.task_id, node="w1", attempt=1)
    )
    assert res.ok
    assert await log.ended_as(entry.task_id) == "task.succeeded"


async def test_other_scripts_refuse_bad_args_and_write_nothing(
    log: EventLog, r: Redis, keys: Keys
) -> None:
    cancel_keys = [
        keys.events(0),
        keys.done(0),
        keys.cancels(0),
        keys.delayed(0),
        keys.delayed_items(0),
    ]
    bad = [
        ("append", [keys.events(0)], [2, "t", b"e"]),  # count says 2, one pair given
        ("append", [keys.events(0)], [1, "", b"e"]),  # empty task id
        ("release_due", [keys.delayed(0), keys.delayed_items(0)], ["now", 10, "p:"]),
        ("release_due", [keys.delayed(0), keys.delayed_items(0)], [1, 0, "p:"]),
        ("request_cancel", cancel_keys, ["t1", b"req", ""]),
        ("request_cancel", cancel_keys, ["", b"req", b"c"]),
        ("renew", [keys.work(0, "q", "normal")], ["", "me", "1-0"]),
    ]
    for name, keys_, args in bad:
        with pytest.raises(ScriptArgumentError):
            await log.scripts.raw(name, keys_, args)
    assert await r.keys(keys.all_keys_pattern()) == []


async def test_release_due_drops_orphans_without_writing_work(
    log: EventLog, r: Redis, keys: Keys
) -> None:
    """A delayed id whose item is missing (hand-edited data) is removed, not retried forever."""
    await r.zadd(keys.delayed(0), {"ghost": 1})
    assert await log.release_due(now=10) == 0
    assert await r.zcard(keys.delayed(0)) == 0
    assert await r.keys(keys.all_keys_pattern()) == []


def _progress(entry: WorkEntry, node: str, delivery: int) -> TaskProgress:
    return TaskProgress(
        task_id=entry.task_id, attempt=1, progress=0.5, node=node, delivery=delivery
    )


async def test_append_held_writes_only_for_the_holder(log: EventLog, r: Redis) -> None:
    """A zombie's progress (issue #10): once another consumer took the entry,
    or it was settled, the old holder's events are refused, not written."""
    entry = await _claim_one(log, "zombie")
    held = await log.append_held("zombie", entry, (*_run_events(entry, "zombie"),))
    assert held.written and len(held.event_ids) == 2
    await asyncio.sleep(0.05)
    (taken,) = (await groups.autoclaim(r, entry.stream, log.group, "rescuer", 10)).entries
    late = await log.append_held("zombie", entry, (_progress(entry, "zombie", 1),))
    assert not late.written and late.not_held == "lease lost to rescuer"
    assert (await log.append_held("rescuer", taken, (_progress(taken, "rescuer", 2),))).written
    done = TaskSucceeded(task_id=entry.task_id, node="rescuer", attempt=1)
    assert (await log.finish("rescuer", taken, done)).ok
    after = await log.append_held("rescuer", taken, (_progress(taken, "rescuer", 2),))
    assert not after.written and "no longer pending" in after.not_held
    progress = [
        e.event for e in await log.history(entry.task_id) if e.event.type_name() == "task.progress"
    ]
    assert [(p.node, p.delivery) for p in progress] == [("rescuer", 2)]


async def test_append_held_refuses_bad_args_and_writes_nothing(
    log: EventLog, r: Redis, keys: Keys
) -> None:
    entry = await _claim_one(log)
    p = keys.partition(entry.task_id)  # one slot on a cluster
    before = await r.xlen(keys.events(p))
    k = [keys.events(p), entry.stream]
    bad = [
        ["", "w1", entry.id, entry.task_id, b"ev"],  # no group
        ["workers", "", entry.id, entry.task_id, b"ev"],  # no consumer
        ["workers", "w1", "", entry.task_id, b"ev"],  # no entry id
        ["workers", "w1", entry.id, entry.task_id],  # no events
        ["workers", "w1", entry.id, entry.task_id, b"ev", b""],  # an empty event
    ]
    for args in bad:
        with pytest.raises(ScriptArgumentError):
            await log.scripts.raw("append_held", k, args)
    other = TaskSucceeded(task_id="someone-else", node="w1", attempt=1)
    with pytest.raises(ValueError, match="another task"):
        await log.append_held("w1", entry, (other,))
    assert await r.xlen(keys.events(p)) == before
