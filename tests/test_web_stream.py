"""SSE over a real HTTP server: view changes arrive with the feed's ids,
filters hold, a client resuming with Last-Event-ID misses nothing and sees
nothing twice, and a client too slow for its buffer gets ``resync``."""

from __future__ import annotations

import json

import httpx
import msgspec
from redis.asyncio import Redis

from eventcore.config import Settings, WebSettings
from eventcore.events import TaskClaimed, TaskSpec
from eventcore.ids import task_id_in_partition
from eventcore.keys import Keys
from eventcore.log import EventLog
from projections.store import ViewStore
from tests.viewkit import feed_rows, stored_views
from tests.webkit import (
    announce,
    folded,
    projector,
    served,
    settings_for,
    sse_clients_become,
    sse_events,
)
from web.position import decode_position, mark_text


def _as_json(view: object) -> object:
    """A view as an SSE event's data carries it."""
    return msgspec.json.decode(msgspec.json.encode(view))


def _entry_of(log: EventLog, event: dict) -> tuple[str, str]:
    """The feed entry an SSE event of a task view stands for: its shard and
    that shard's part of the event's position."""
    shard = log.keys.shard_of_task(json.loads(event["data"])["id"])
    marks = decode_position(event["id"])
    return shard, mark_text(marks[log.keys.view_shards().index(shard)])


async def test_stream_sends_view_changes_with_feed_ids(
    redis_url: str, log: EventLog, namespace: str
) -> None:
    async with projector(log), served(redis_url, settings_for(namespace)) as base:
        async with httpx.AsyncClient(base_url=base, timeout=10) as c:
            async with c.stream("GET", "/v1/stream", params={"entity": "task"}) as resp:
                assert resp.status_code == 200
                assert resp.headers["content-type"].startswith("text/event-stream")
                sub = await c.post("/v1/tasks", json={"kind": "noop"})
                task_id = sub.json()["task_id"]
                (event,) = await sse_events(resp, limit=1)
    assert event["event"] == "task"
    data = json.loads(event["data"])
    assert data["id"] == task_id and data["view"]["status"] == "queued"
    assert _entry_of(log, event) in {(s, i) for s, i, _ in await feed_rows(log)}


async def test_resume_with_last_event_id_misses_nothing_and_repeats_nothing(
    redis_url: str, log: EventLog, namespace: str
) -> None:
    spec = TaskSpec(kind="noop", queue="cpu-light")
    async with projector(log), served(redis_url, settings_for(namespace)) as base:
        async with httpx.AsyncClient(base_url=base, timeout=10) as c:
            async with c.stream("GET", "/v1/stream", params={"entity": "task"}) as resp:
                # A stream without Last-Event-ID starts where the hub is when it
                # registers, a moment after its headers: wait for that.
                await sse_clients_become(c, 1)
                for _ in range(5):
                    await log.submit(spec)
                first = await sse_events(resp, limit=3)
            # Disconnected after 3 of 5; 20 more happen while away.
            for _ in range(20):
                await log.submit(spec)
            await folded(log)  # in the feed: the resume reads them as history
            headers = {"Last-Event-ID": first[-1]["id"]}
            async with c.stream(
                "GET", "/v1/stream", params={"entity": "task"}, headers=headers
            ) as resp:
                rest = await sse_events(resp, limit=22)
                for _ in range(3):  # and live ones after the history
                    await log.submit(spec)
                live = await sse_events(resp, limit=3)
    ids = [e["id"] for e in first + rest + live]
    assert len(ids) == len(set(ids)) == 28
    got = [_entry_of(log, e) for e in first + rest + live]
    task_feed = [(s, i) for s, i, f in await feed_rows(log) if f[b"entity"] == b"task"]
    # Every task change once; each shard's in its feed's order.
    assert sorted(got) == sorted(task_feed), (len(got), len(task_feed))
    for shard in log.keys.view_shards():
        assert [i for s, i in got if s == shard] == [i for s, i in task_feed if s == shard]


async def test_filters_by_task_and_status(redis_url: str, log: EventLog, namespace: str) -> None:
    spec = TaskSpec(kind="noop", queue="cpu-light")
    async with projector(log), served(redis_url, settings_for(namespace)) as base:
        async with httpx.AsyncClient(base_url=base, timeout=10) as c:
            mine = (await log.submit(spec)).task_id
            await folded(log)
            async with c.stream(
                "GET", "/v1/stream", params={"task": mine}, headers={"Last-Event-ID": "0-0"}
            ) as resp:
                for _ in range(5):
                    await log.submit(spec)
                await log.request_cancel(mine, reason="test")
                got = await sse_events(resp, limit=10, timeout=2)
            bad = await c.get("/v1/stream", params={"colour": "red"})
            assert bad.status_code == 422 and "colour" in bad.json()["detail"]
            bad = await c.get("/v1/stream", headers={"Last-Event-ID": "yesterday"})
            assert bad.status_code == 422
    assert got and {json.loads(e["data"])["id"] for e in got} == {mine}


async def test_slow_client_gets_resync_not_unbounded_memory(
    redis_url: str, log: EventLog, namespace: str
) -> None:
    spec = TaskSpec(kind="noop", queue="cpu-light")
    settings = settings_for(namespace, sse_buffer=5)
    async with projector(log), served(redis_url, settings) as base:
        async with httpx.AsyncClient(base_url=base, timeout=10) as c:
            async with c.stream("GET", "/v1/stream") as resp:
                await sse_clients_become(c, 1)  # registered for live changes
                # The client reads nothing while 200 changes are published.
                for _ in range(200):
                    await log.submit(spec)
                await sse_clients_become(c, 0)  # cut off by the hub
                events = await sse_events(resp, limit=1000, timeout=3)
    kinds = [e.get("event") for e in events]
    assert "resync" in kinds, kinds[-5:]
    assert kinds.index("resync") == len(kinds) - 1  # dropped after it


async def test_an_id_of_the_feed_before_view_shards_gets_a_resync(
    redis_url: str, log: EventLog, namespace: str
) -> None:
    """A browser that streamed before an upgrade comes back with a plain
    feed entry id: it is told to start over (an ``EventSource`` given a 4xx
    would stop reconnecting)."""
    async with projector(log), served(redis_url, settings_for(namespace)) as base:
        async with httpx.AsyncClient(base_url=base, timeout=10) as c:
            headers = {"Last-Event-ID": "1733000000000-5"}
            async with c.stream("GET", "/v1/stream", headers=headers) as resp:
                assert resp.status_code == 200
                (event,) = await sse_events(resp, limit=1)
    assert event["event"] == "resync"


async def test_resume_with_last_event_id_across_a_web_restart(
    redis_url: str, log: EventLog, namespace: str
) -> None:
    """The position holds only stream ids: a new web process resumes it."""
    spec = TaskSpec(kind="noop", queue="cpu-light")
    settings = settings_for(namespace)
    async with projector(log):
        async with served(redis_url, settings) as base:
            async with httpx.AsyncClient(base_url=base, timeout=10) as c:
                async with c.stream("GET", "/v1/stream", params={"entity": "task"}) as resp:
                    await sse_clients_become(c, 1)
                    for _ in range(5):
                        await log.submit(spec)
                    first = await sse_events(resp, limit=5)
        # The web process is gone; 10 more happen before the next one starts.
        for _ in range(10):
            await log.submit(spec)
        await folded(log)
        async with served(redis_url, settings) as base:
            async with httpx.AsyncClient(base_url=base, timeout=10) as c:
                headers = {"Last-Event-ID": first[-1]["id"]}
                async with c.stream(
                    "GET", "/v1/stream", params={"entity": "task"}, headers=headers
                ) as resp:
                    assert resp.status_code == 200
                    rest = await sse_events(resp, limit=10)
                    for _ in range(3):  # and live ones after the history
                        await log.submit(spec)
                    live = await sse_events(resp, limit=3)
    events = first + rest + live
    assert [len(first), len(rest), len(live)] == [5, 10, 3]
    got = [_entry_of(log, e) for e in events]
    task_feed = [(s, i) for s, i, f in await feed_rows(log) if f[b"entity"] == b"task"]
    assert len(got) == len(set(got)) == 18
    assert sorted(got) == sorted(task_feed)
    for shard in log.keys.view_shards():
        assert [i for s, i in got if s == shard] == [i for s, i in task_feed if s == shard]


async def test_queue_stats_and_node_events_carry_the_whole_merged_view(
    redis_url: str, r: Redis, namespace: str
) -> None:
    """Three partitions, so every queue, stats and node view is in parts: an
    SSE event sends the view merged over the shards, not one shard's part."""
    partitions = 3
    log = EventLog(r, Keys(namespace, partitions))
    settings = Settings(namespace=namespace, partitions=partitions, web=WebSettings())
    spec = TaskSpec(kind="noop", queue="cpu-light")
    ids = [task_id_in_partition(p, partitions) for p in range(partitions) for _ in range(2)]
    assert {log.keys.partition(t) for t in ids} == set(range(partitions))
    async with projector(log), served(redis_url, settings) as base:
        async with httpx.AsyncClient(base_url=base, timeout=10) as c:
            async with c.stream("GET", "/v1/stream") as resp:
                await sse_clients_become(c, 1)
                await announce(log, "n1", ("noop",))
                for task_id in ids:
                    await log.submit(spec, task_id=task_id)
                held = ids[::2]  # one task of each partition claimed by n1
                for task_id in held:
                    claim = TaskClaimed(
                        task_id=task_id, node="n1", attempt=1, deliveries=1, entry_id="1-0"
                    )
                    await log.append(claim)
                await folded(log)
                rows = await feed_rows(log)
                events = await sse_events(resp, limit=len(rows))
    assert len(events) == len(rows)

    def last(entity: str, key: str) -> dict:
        views = [json.loads(e["data"]) for e in events if e["event"] == entity]
        return [v for v in views if v["id"] == key][-1]["view"]

    whole = ViewStore(log)
    merged = await stored_views(whole)
    queue = last("queue", "cpu-light")
    assert queue["submitted"] == len(ids)
    assert queue["waiting"] == len(ids) - len(held) and queue["in_flight"] == len(held)
    assert sorted(queue["waiting_since"]) == sorted(set(ids) - set(held))
    assert queue == _as_json(merged.queues["cpu-light"])
    stats = last("stats", "*")
    assert stats["totals"]["submitted"] == len(ids)
    assert stats == _as_json(merged.stats)
    node = last("node", "n1")
    assert node["state"] == "online" and node["running"] == sorted(held)
    assert node == _as_json(merged.nodes["n1"])
