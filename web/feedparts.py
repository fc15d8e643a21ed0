"""Whole queue, stats and node views for the live feed.

A view shard's feed announces a queue, stats or node view as that shard
holds it: its *part* (:mod:`projections.merge`). A client wants the whole
view, so the feed reader keeps the latest part of each such view from every
shard (read once from the views in use the first time a view is seen, then
kept up to date from the feeds) and sends the merged view with each change.
Task views live whole in one shard and go through unchanged.
"""

from __future__ import annotations

from typing import Any

import msgspec

from eventcore.keys import NODE_SHARD
from eventcore.log import EventLog
from projections.merge import merge_nodes, merge_queue, merge_stats
from projections.store import ViewStore, current_views
from projections.views import NodeView, QueueView, StatsView

__all__ = ["MERGED", "FeedParts"]

MERGED = frozenset({"queue", "stats", "node"})

_types: dict[str, Any] = {"queue": QueueView, "stats": StatsView, "node": NodeView}
_decoders = {e: msgspec.msgpack.Decoder(t) for e, t in _types.items()}
_to_builtins = msgspec.to_builtins


class FeedParts:
    """The latest part, per shard, of every queue, stats and node view the
    feed has named."""

    def __init__(self, log: EventLog) -> None:
        self.log = log
        self.shards = log.keys.view_shards()
        self._parts: dict[tuple[str, str], dict[str, Any]] = {}
        self._loaded: set[tuple[str, str]] = set()

    def known(self, entity: str, key: str) -> bool:
        """Whether every shard's part of this view has been read once."""
        return (entity, key) in self._loaded

    async def load(self, entity: str, key: str) -> None:
        """Read every shard's part of one view from the views in use."""
        store = ViewStore(self.log, await current_views(self.log))
        async with self.log.redis.pipeline(transaction=False) as pipe:
            for shard in self.shards:
                s = store.shard(shard)
                hash_key = {"queue": s.queues_key, "stats": s.stats_key, "node": s.nodes_key}
                pipe.hget(hash_key[entity], key)
            raw = await pipe.execute()
        parts = self._parts.setdefault((entity, key), {})
        for shard, value in zip(self.shards, raw):
            if value is not None and shard not in parts:
                parts[shard] = _decoders[entity].decode(value)
        self._loaded.add((entity, key))

    def note(self, entity: str, key: str, shard: int, raw: bytes) -> None:
        """Shard number ``shard``'s part of a view is now ``raw``."""
        self._parts.setdefault((entity, key), {})[self.shards[shard]] = _decoders[entity].decode(
            raw
        )

    def merged(self, entity: str, key: str, shard: int, raw: bytes, *, keep: bool = True) -> Any:
        """The whole view (as JSON-ready builtins) with shard number
        ``shard``'s part ``raw`` and the latest known parts of the others.
        ``keep``: ``raw`` is the newest part of that shard (a live change);
        an old one (read as history) is used for this view only."""
        name = self.shards[shard]
        parts = self._parts.setdefault((entity, key), {})
        if not keep:
            parts = dict(parts)
        parts[name] = _decoders[entity].decode(raw)
        if entity == "queue":
            view: Any = merge_queue(list(parts.values()))
        elif entity == "stats":
            view = merge_stats(list(parts.values()))
        else:
            told = {key: parts[NODE_SHARD]} if NODE_SHARD in parts else {}
            sides = [{key: v} for s, v in parts.items() if s != NODE_SHARD]
            view = merge_nodes(told, sides)[key]
        return _to_builtins(view)
