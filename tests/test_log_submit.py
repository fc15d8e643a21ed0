"""Submitting tasks: the TaskSubmitted event and the work entry are written together."""

from __future__ import annotations

import time

import pytest
from redis.asyncio import Redis

from eventcore.codec import TASK
from eventcore.errors import ScriptArgumentError
from eventcore.events import Priority, TaskScheduled, TaskSpec, TaskSubmitted
from eventcore.keys import Keys
from eventcore.log import EventLog, Submission
from eventcore.log.groups import WorkEntry

SPEC = TaskSpec(kind="noop", queue="cpu-light", params={"x": 1})


async def test_submit_writes_event_and_work_entry(log: EventLog, r: Redis, keys: Keys) -> None:
    res = await log.submit(SPEC)
    assert res.created
    p = keys.partition(res.task_id)
    events = await log.read(keys.events(p))
    assert [e.id for e in events] == [res.event_id]
    ev = events[0].event
    assert isinstance(ev, TaskSubmitted) and ev.task_id == res.task_id and ev.spec == SPEC
    work = await r.xrange(keys.work(p, "cpu-light", Priority.NORMAL))
    assert len(work) == 1
    entry = WorkEntry.from_reply("w", *work[0])
    assert entry.task_id == res.task_id and entry.attempt == 1
    assert entry.submitted == ev


async def test_priority_picks_the_stream(log: EventLog, r: Redis, keys: Keys) -> None:
    res = await log.submit(TaskSpec(kind="noop", queue="q1", priority=Priority.HIGH))
    p = keys.partition(res.task_id)
    assert await r.xlen(keys.work(p, "q1", Priority.HIGH)) == 1
    assert await r.xlen(keys.work(p, "q1", Priority.NORMAL)) == 0


async def test_idempotent_submit_returns_same_task_and_writes_nothing(
    log: EventLog, r: Redis, keys: Keys
) -> None:
    first = await log.submit(SPEC, idempotency_key="abc")
    second = await log.submit(SPEC, idempotency_key="abc")
    assert first.created and not second.created
    assert second.task_id == first.task_id and second.event_id == ""
    p = keys.partition(first.task_id)
    assert await r.xlen(keys.events(p)) == 1
    assert await r.xlen(keys.work(p, "cpu-light", "normal")) == 1
    # The same key in another tenant is another task.
    other = await log.submit(
        TaskSpec(kind="noop", queue="cpu-light", tenant="acme"), idempotency_key="abc"
    )
    assert other.created and other.task_id != first.task_id


async def test_idempotency_within_one_batch(log: EventLog) -> None:
    subs = [Submission(spec=SPEC, idempotency_key="k")] * 3
    results = await log.submit_many(subs)
    assert [r.created for r in results] == [True, False, False]
    assert len({r.task_id for r in results}) == 1


async def test_idempotency_key_expires(r: Redis, keys: Keys) -> None:
    log = EventLog(r, keys, idempotency_ttl=0.05)
    first = await log.submit(SPEC, idempotency_key="k")
    time.sleep(0.1)
    second = await log.submit(SPEC, idempotency_key="k")
    assert second.created and second.task_id != first.task_id


@pytest.mark.parametrize("partitions", [1, 3, 8])
async def test_batch_submit_spreads_over_partitions(
    r: Redis, namespace: str, partitions: int
) -> None:
    keys = Keys(namespace, partitions)
    log = EventLog(r, keys)
    results = await log.submit_many([Submission(spec=SPEC) for _ in range(60)])
    assert len({x.task_id for x in results}) == 60
    total = 0
    for p in keys.all_partitions():
        entries = await log.read(keys.events(p))
        assert all(keys.partition(e.event.task_id) == p for e in entries)
        total += len(entries)
        assert await r.xlen(keys.work(p, "cpu-light", "normal")) == len(entries)
    assert total == 60
    # Idempotency keys work across partitions too.
    again = await log.submit_many(
        [Submission(spec=SPEC, idempotency_key=f"k{i}") for i in range(20)]
    )
    repeat = await log.submit_many(
        [Submission(spec=SPEC, idempotency_key=f"k{i}") for i in range(20)]
    )
    assert [a.task_id for a in again] == [b.task_id for b in repeat]
    assert not any(b.created for b in repeat)


async def test_delayed_submit_goes_to_delayed_set_then_released(
    log: EventLog, r: Redis, keys: Keys
) -> None:
    run_at = time.time() + 30
    res = await log.submit(SPEC, run_at=run_at)
    p = keys.partition(res.task_id)
    events = [e.event for e in await log.read(keys.events(p))]
    assert [type(e) for e in events] == [TaskSubmitted, TaskScheduled]
    assert events[1].run_at == run_at
    work = keys.work(p, "cpu-light", "normal")
    assert await r.xlen(work) == 0
    assert await r.zscore(keys.delayed(p), res.task_id) == int(run_at * 1000)
    assert await log.release_due() == 0
    assert await log.release_due(now=run_at + 1) == 1
    assert await log.release_due(now=run_at + 1) == 0  # released once only
    entries = await r.xrange(work)
    entry = WorkEntry.from_reply(work, *entries[0])
    assert entry.task_id == res.task_id and entry.attempt == 1
    assert entry.submitted.spec == SPEC
    assert await r.zcard(keys.delayed(p)) == 0 and await r.hlen(keys.delayed_items(p)) == 0


async def test_bad_queue_name_is_refused_before_writing(
    log: EventLog, r: Redis, keys: Keys
) -> None:
    with pytest.raises(ValueError, match="queue"):
        await log.submit(TaskSpec(kind="noop", queue="bad queue:name"))
    assert await r.keys(keys.all_keys_pattern()) == []


async def test_bad_task_id_is_refused(log: EventLog) -> None:
    with pytest.raises(ValueError, match="UUIDv7"):
        await log.submit(SPEC, task_id="not-an-id")


async def test_submit_script_refuses_bad_args_and_writes_nothing(
    log: EventLog, r: Redis, keys: Keys
) -> None:
    k = [
        keys.events(0),
        keys.delayed(0),
        keys.delayed_items(0),
        keys.work(0, "q", "normal"),
        keys.events(0),
    ]
    good = ["t1", b"x", 0, 0, b"", b""]
    bad_calls = [
        (k, ["1000", 1, "", b"x", 0, 0, b"", b""]),  # empty task id
        (k, ["1000", 1, "t1", b"x", 2, 0, b"", b""]),  # idem flag not 0/1
        (k, ["1000", 1, "t1", b"x", 0, "soon", b"", b""]),  # run_at not a number
        (k, ["1000", 1, "t1", b"x", 0, 5, b"", b""]),  # delayed without its events
        (k, ["1000", 2, *good]),  # count says 2, one given
        (k, ["0", 1, *good]),  # ttl 0
        (k[:4], ["1000", 1, *good]),  # a key missing
        # a batch whose second task is bad: the first must not be written either
        (k + k[3:], ["1000", 2, *good, "t2", b"", 0, 0, b"", b""]),
    ]
    for keys_, args in bad_calls:
        with pytest.raises(ScriptArgumentError):
            await log.scripts.raw("submit", keys_, args)
    assert await r.keys(keys.all_keys_pattern()) == []


async def test_submitted_entries_decode_with_the_task_codec(
    log: EventLog, r: Redis, keys: Keys
) -> None:
    res = await log.submit(SPEC)
    ((_eid, fields),) = await r.xrange(keys.events(keys.partition(res.task_id)))
    assert fields[b"task"] == res.task_id.encode()
    assert TASK.decode(fields[b"e"]).task_id == res.task_id
