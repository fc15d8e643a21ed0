"""Node liveness: heartbeats recorded with their events, NodeLost written once."""

from __future__ import annotations

import asyncio

import pytest

from eventcore.events import (
    Capabilities,
    NodeHeartbeat,
    NodeLost,
    NodeStarted,
    NodeStopped,
    TaskSpec,
)
from eventcore.ids import task_id_in_partition
from eventcore.log import EventLog, Submission, groups
from eventcore.nodes import append_node_event, last_seen, mark_lost

CAPS = Capabilities(cpu_cores=2, memory_mb=1024)


async def test_node_events_record_liveness(log: EventLog) -> None:
    await append_node_event(log, NodeStarted(node="n1", capabilities=CAPS), now=100.0)
    await append_node_event(log, NodeHeartbeat(node="n1"), now=105.0)
    assert await last_seen(log) == {"n1": 105.0}
    await append_node_event(log, NodeStopped(node="n1", reason="done"), now=106.0)
    assert await last_seen(log) == {}
    types = [type(e.event) for e in await log.read(log.keys.nodes())]
    assert types == [NodeStarted, NodeHeartbeat, NodeStopped]


async def test_lost_is_written_once_however_many_notice(log: EventLog) -> None:
    await append_node_event(log, NodeHeartbeat(node="n1"), now=100.0)
    assert not await mark_lost(log, "n1", silent_for=20, noticed_by="w2", now=110.0)
    results = await asyncio.gather(
        *(mark_lost(log, "n1", silent_for=20, noticed_by=f"w{i}", now=130.0) for i in range(5))
    )
    assert sum(results) == 1
    lost = [e.event for e in await log.read(log.keys.nodes()) if isinstance(e.event, NodeLost)]
    assert len(lost) == 1 and lost[0].last_seen == 100.0
    # A node that speaks again is alive again, and can be lost again later.
    await append_node_event(log, NodeHeartbeat(node="n1"), now=140.0)
    assert await last_seen(log) == {"n1": 140.0}


async def test_a_heartbeat_after_the_check_prevents_a_false_lost(log: EventLog) -> None:
    await append_node_event(log, NodeHeartbeat(node="n1"), now=100.0)
    # The node beats at 125 between a watcher's read and its script call: the
    # script sees the fresh time and writes nothing.
    await append_node_event(log, NodeHeartbeat(node="n1"), now=125.0)
    assert not await mark_lost(log, "n1", silent_for=20, noticed_by="w2", now=130.0)


async def test_claim_new_takes_in_order_and_flags_cancels(log: EventLog) -> None:
    keys = log.keys
    hi = TaskSpec(kind="noop", queue="q", priority="high")
    lo = TaskSpec(kind="noop", queue="q", priority="low")
    ids = [task_id_in_partition(0, keys.partitions) for _ in range(5)]  # all in one partition
    low = await log.submit_many([Submission(spec=lo, task_id=i) for i in ids[:3]])
    high = await log.submit_many([Submission(spec=hi, task_id=i) for i in ids[3:]])
    await log.request_cancel(low[0].task_id)
    streams = [keys.work(0, "q", p) for p in ("high", "normal", "low")]
    got = await groups.claim_new(log.scripts, keys.cancels(0), streams, "g", "c1", 3)
    assert [e.task_id for e in got.entries] == [high[0].task_id, high[1].task_id, low[0].task_id]
    assert [e.cancel_requested for e in got.entries] == [False, False, True]
    assert got.last_ids[streams[1]] == "0-0"  # created empty by the claim
    assert got.last_ids[streams[2]] != "0-0"
    rest = await groups.claim_new(log.scripts, keys.cancels(0), streams, "g", "c2", 10)
    assert [e.task_id for e in rest.entries] == [low[1].task_id, low[2].task_id]
    none = await groups.claim_new(log.scripts, keys.cancels(0), streams, "g", "c2", 10)
    assert none.entries == []


async def test_live_nodes_know_their_queues(log: EventLog) -> None:
    from eventcore.nodes import live_nodes

    await append_node_event(
        log, NodeStarted(node="a", capabilities=CAPS, queues=("q1",)), now=100.0
    )
    await append_node_event(
        log, NodeStarted(node="b", capabilities=CAPS, queues=("q2",)), now=100.0
    )
    await append_node_event(log, NodeHeartbeat(node="a"), now=118.0)
    alive = await live_nodes(log, silent_for=10, now=120.0)
    assert {n: s.queues for n, s in alive.items()} == {"a": ("q1",)}
    await append_node_event(log, NodeStopped(node="a"), now=121.0)
    assert await live_nodes(log, silent_for=10, now=121.0) == {}
    assert await log.redis.hlen(log.keys.nodes_info()) == 1  # b: lost later, not stopped
    assert await mark_lost(log, "b", silent_for=10, noticed_by="x", now=130.0)
    assert await log.redis.hlen(log.keys.nodes_info()) == 0


async def test_announced_nodes_leave_out_a_record_that_does_not_decode(
    log: EventLog, caplog: pytest.LogCaptureFixture
) -> None:
    from eventcore.nodes import announced_nodes, live_nodes

    await append_node_event(log, NodeStarted(node="a", capabilities=CAPS), now=100.0)
    await log.redis.hset(log.keys.nodes_info(), "bad", b"\xc1not msgpack")
    records = await announced_nodes(log)
    assert list(records) == ["a"] and records["a"].last_seen == 100.0
    assert "bad" in caplog.text
    assert list(await live_nodes(log, silent_for=10, now=105.0)) == ["a"]
