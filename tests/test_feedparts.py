"""The feed reader's parts of queue, stats and node views: read once per
view, and a read that fails (Redis away a moment) neither stops the reader
nor leaves the view merged from one shard for good."""

from __future__ import annotations

from eventcore.ids import stream_id_key
from eventcore.log import EventLog
from web.feed import FeedHub


async def test_a_failed_read_of_the_parts_is_tried_again(log: EventLog) -> None:
    hub = FeedHub(log)
    real = hub.parts.load
    calls: list[str] = []

    async def flaky(entity: str, key: str) -> None:
        calls.append(key)
        if len(calls) == 1:
            raise ConnectionError("Redis away a moment")
        await real(entity, key)

    hub.parts.load = flaky  # type: ignore[method-assign]
    fields = {b"entity": b"queue", b"id": b"q"}
    await hub._know(fields)  # logged, not raised
    assert not hub.parts.known("queue", "q")
    await hub._know(fields)
    await hub._know(fields)  # read once, then known
    assert hub.parts.known("queue", "q") and calls == ["q", "q"]


async def test_dropped_after_asks_every_shard_feed(log: EventLog) -> None:
    """No feed yet: nothing dropped. A feed that lost entries after a
    position's mark for it: dropped; marks past what was lost: not."""
    from web.position import encode_position

    hub = FeedHub(log)
    start = encode_position(((0, 0),) * len(hub.keys))
    assert not await hub.dropped_after(start)
    last = hub.keys[-1]
    ids = [await log.redis.xadd(last, {"entity": "node"}) for _ in range(3)]
    await log.redis.xdel(last, ids[1])
    # Redis 7 reports the largest deleted id; 6.2 is only judged near the cap.
    exact = "max-deleted-entry-id" in await log.redis.xinfo_stream(last)
    assert await hub.dropped_after(start) == exact
    after = tuple(stream_id_key(i.decode()) for i in (ids[2],))
    past = encode_position(((0, 0),) * (len(hub.keys) - 1) + after)
    assert not await hub.dropped_after(past)
