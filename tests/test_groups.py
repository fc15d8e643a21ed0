"""Consumer-group behaviour against a real server: claim, autoclaim, renew, pending."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from eventcore.events import Priority, TaskSpec
from eventcore.ids import task_id_in_partition
from eventcore.keys import Keys
from eventcore.log import EventLog, Submission, groups


async def _queue(log: EventLog, n: int, priority: Priority = Priority.NORMAL) -> str:
    spec = TaskSpec(kind="noop", queue="q", priority=priority)
    # Every task in partition 0, whatever the partition count, so one stream holds them all.
    ids = [task_id_in_partition(0, log.keys.partitions) for _ in range(n)]
    await log.submit_many([Submission(spec=spec, task_id=i) for i in ids])
    stream = log.keys.work(0, "q", priority)
    await groups.ensure_group(log.redis, stream, log.group)
    return stream


async def test_ensure_group_is_idempotent(r: Redis, keys: Keys) -> None:
    stream = keys.work(0, "q", "normal")
    assert await groups.ensure_group(r, stream, "g") is True
    assert await groups.ensure_group(r, stream, "g") is False
    assert await r.exists(stream)


async def test_read_group_takes_high_priority_first_and_never_more_than_count(
    log: EventLog, r: Redis
) -> None:
    low = await _queue(log, 3, Priority.LOW)
    high = await _queue(log, 2, Priority.HIGH)
    got = await groups.read_group(r, log.group, "c", [high, low], count=4)
    assert [e.stream for e in got] == [high, high, low, low]
    got = await groups.read_group(r, log.group, "c", [high, low], count=4)
    assert [e.stream for e in got] == [low]
    got = await groups.read_group(r, log.group, "c", [high, low], count=4, block_ms=50)
    assert got == []


async def test_renew_keeps_own_entries_fresh_and_never_steals(log: EventLog, r: Redis) -> None:
    stream = await _queue(log, 2)
    a, b = await groups.read_group(r, log.group, "me", [stream], count=2)
    await asyncio.sleep(0.2)
    # Someone else takes b over.
    await groups.claim(r, stream, log.group, "other", 100, [b.id])
    renewed = await groups.renew(r, log.scripts, stream, log.group, "me", [a.id, b.id])
    assert renewed == [a.id]
    rows = {p.id: p for p in await groups.pending(r, stream, log.group)}
    assert rows[a.id].consumer == "me" and rows[a.id].idle_ms < 100
    assert rows[a.id].deliveries == 1  # renewing does not count as a delivery
    assert rows[b.id].consumer == "other"
    # So an autoclaim by a third worker with a lease of 150 ms finds nothing of mine.
    taken = await groups.autoclaim(r, stream, log.group, "third", 150)
    assert [e.id for e in taken.entries] == []


async def test_autoclaim_takes_idle_entries_with_delivery_counts(log: EventLog, r: Redis) -> None:
    stream = await _queue(log, 3)
    held = await groups.read_group(r, log.group, "dead", [stream], count=3)
    await asyncio.sleep(0.05)
    res = await groups.autoclaim(r, stream, log.group, "alive", 20, count=10)
    assert [e.id for e in res.entries] == [e.id for e in held]
    assert all(e.deliveries == 2 for e in res.entries)
    assert all(e.submitted.spec.kind == "noop" for e in res.entries)
    summary = await groups.pending_summary(r, stream, log.group)
    assert summary.count == 3 and summary.consumers == {"alive": 3}


async def test_autoclaim_reports_entries_deleted_while_pending(log: EventLog, r: Redis) -> None:
    stream = await _queue(log, 2)
    a, b = await groups.read_group(r, log.group, "dead", [stream], count=2)
    await r.xdel(stream, a.id)
    await asyncio.sleep(0.05)
    res = await groups.autoclaim(r, stream, log.group, "alive", 20)
    assert [e.id for e in res.entries] == [b.id]
    assert res.deleted == [a.id]
    assert [p.id for p in await groups.pending(r, stream, log.group)] == [b.id]


async def test_pending_filters_by_consumer_and_idle(log: EventLog, r: Redis) -> None:
    stream = await _queue(log, 2)
    await groups.read_group(r, log.group, "x", [stream], count=1)
    await asyncio.sleep(0.1)
    await groups.read_group(r, log.group, "y", [stream], count=1)
    assert [p.consumer for p in await groups.pending(r, stream, log.group, consumer="y")] == ["y"]
    idle = await groups.pending(r, stream, log.group, min_idle_ms=80)
    assert [p.consumer for p in idle] == ["x"]


async def test_renew_resets_every_entry_it_holds(log: EventLog, r: Redis) -> None:
    """Regression: the renew script passed its ids with unpack() in the middle of
    XCLAIM's arguments, where Lua keeps only the first value, so only the first
    entry of a batch was renewed and the others were reclaimed from a live worker."""
    stream = await _queue(log, 3)
    held = await groups.read_group(r, log.group, "me", [stream], count=3)
    await asyncio.sleep(0.15)
    await groups.renew(r, log.scripts, stream, log.group, "me", [e.id for e in held])
    assert all(p.idle_ms < 100 for p in await groups.pending(r, stream, log.group))
