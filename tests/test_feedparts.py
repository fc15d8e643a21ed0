"""The feed reader's parts of queue, stats and node views: read once per
view, and a read that fails (Redis away a moment) neither stops the reader
nor leaves the view merged from one shard for good."""

from __future__ import annotations

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
