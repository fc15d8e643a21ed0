"""Reading the log: ranges, time ranges, blocking tail, task history, bad entries."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio import Redis

from eventcore.errors import DecodeError
from eventcore.events import (
    ControlAcked,
    ControlIssued,
    ControlKind,
    NodeHeartbeat,
    TaskProgress,
    TaskSpec,
    TaskSubmitted,
)
from eventcore.ids import task_id_in_partition
from eventcore.keys import Keys
from eventcore.log import EventLog, Submission

SPEC = TaskSpec(kind="noop", queue="q")


def _p0(keys: Keys) -> str:
    """A task id in partition 0, whose stream these tests read."""
    return task_id_in_partition(0, keys.partitions)


async def test_append_many_routes_each_event_to_its_stream(
    log: EventLog, keys: Keys, r: Redis
) -> None:
    res = await log.submit(SPEC)
    events = [
        NodeHeartbeat(node="n1", free_slots=1),
        TaskProgress(task_id=res.task_id, attempt=1, progress=0.5),
        ControlIssued(command_id="c1", target="n1", kind=ControlKind.PING),
        ControlIssued(command_id="c2", target="*", kind=ControlKind.PAUSE),
        ControlAcked(command_id="c1", node="n1", ok=True),
    ]
    ids = await log.append_many(events)
    assert all(ids)  # ids are unique per stream, not across streams
    assert [e.event for e in await log.read(keys.nodes())] == [events[0]]
    assert await r.hexists(keys.nodes_seen(), "n1")  # node events keep liveness however written
    assert [e.event for e in await log.read(keys.control("n1"))] == [events[2]]
    assert [e.event for e in await log.read(keys.control_broadcast())] == [events[3]]
    assert [e.event for e in await log.read(keys.control_acks())] == [events[4]]
    history = await log.history(res.task_id)
    assert [type(e.event) for e in history] == [TaskSubmitted, TaskProgress]
    assert history[1].id == ids[1]


async def test_history_returns_only_that_task_across_batches(log: EventLog) -> None:
    results = await log.submit_many([Submission(spec=SPEC) for _ in range(30)])
    mine = results[7].task_id
    for i in range(5):
        await log.append_many(
            [TaskProgress(task_id=r.task_id, attempt=1, progress=i / 10) for r in results]
        )
    history = await log.history(mine, batch=16)  # forces several XRANGE pages
    assert [e.event.task_id for e in history] == [mine] * 6
    assert [e.event.progress for e in history[1:]] == [0.0, 0.1, 0.2, 0.3, 0.4]
    as_pairs = [tuple(map(int, e.id.split("-"))) for e in history]
    assert as_pairs == sorted(as_pairs)


async def test_read_between_times(log: EventLog, keys: Keys) -> None:
    await log.submit(SPEC, task_id=_p0(keys))
    await asyncio.sleep(0.02)
    mid = time.time()
    await asyncio.sleep(0.02)
    second = await log.submit(SPEC, task_id=_p0(keys))
    after = await log.read_between(keys.events(0), mid)
    assert [e.event.task_id for e in after] == [second.task_id]
    before = await log.read_between(keys.events(0), 0, mid)
    assert len(before) == 1 and before[0].event.task_id != second.task_id


async def test_tail_blocks_until_an_event_arrives(log: EventLog, keys: Keys) -> None:
    stream = keys.events(0)

    async def later() -> None:
        await asyncio.sleep(0.1)
        await log.submit(SPEC, task_id=_p0(keys))

    writer = asyncio.create_task(later())
    t0 = time.monotonic()
    got = await log.tail({stream: "$"}, block_ms=2000)
    await writer
    assert len(got) == 1 and isinstance(got[0].event, TaskSubmitted)
    assert 0.05 < time.monotonic() - t0 < 1.5
    assert await log.tail({stream: got[0].id}, block_ms=50) == []


async def test_bad_entry_raises_naming_stream_and_id(log: EventLog, r: Redis, keys: Keys) -> None:
    stream = keys.events(0)
    await log.submit(SPEC)
    bad_id = (await r.xadd(stream, {"task": "x", "e": b"\x93\x01\x02"})).decode()
    await log.submit(SPEC)
    with pytest.raises(DecodeError) as err:
        await log.read(stream)
    assert err.value.stream == stream and err.value.entry_id == bad_id


async def test_bad_entry_is_parked_not_skipped_silently(
    log: EventLog, r: Redis, keys: Keys
) -> None:
    stream = keys.events(0)
    await log.submit(SPEC, task_id=_p0(keys))
    bad_id = (await r.xadd(stream, {"task": "x", "e": b"junk"})).decode()
    await r.xadd(stream, {"nothing": "here"})
    await log.submit(SPEC, task_id=_p0(keys))
    good = await log.read(stream, park_bad=True)
    assert len(good) == 2
    parked = await r.xrange(keys.parked())
    assert len(parked) == 2
    fields = parked[0][1]
    assert fields[b"stream"] == stream.encode() and fields[b"entry"] == bad_id.encode()
    assert fields[b"raw:e"] == b"junk" and fields[b"error"]
    # tail parks too and carries on
    got = await log.tail({stream: "0"}, park_bad=True)
    assert len(got) == 2 and len(await r.xrange(keys.parked())) == 4
