"""Helpers for projection tests: every stored view, views in canonical bytes,
a raw dump of a view namespace, and the log up to a watermark."""

from __future__ import annotations

from typing import Any

import msgspec

from eventcore.codec import Entry
from eventcore.log import EventLog
from projections.replay import Views
from projections.store import SEP, ShardStore, ViewStore
from projections.tools import whole_log

_enc = msgspec.msgpack.Encoder()


async def stored_views(store: ViewStore | ShardStore) -> Views:
    """Every view in ``store`` (merged over its shards), or in one shard,
    task views found by scanning for their keys."""
    return await store.load(await store.task_ids())


async def feed_rows(log: EventLog) -> list[tuple[str, str, dict[bytes, bytes]]]:
    """Every entry of every shard's feed: (shard, entry id, fields), shard by shard."""
    out = []
    for shard in log.keys.view_shards():
        for raw_id, fields in await log.redis.xrange(log.keys.feed(shard)):
            out.append((shard, raw_id.decode(), fields))
    return out


async def view_keys(log: EventLog, view_ns: str) -> list[str]:
    """Every key of a view namespace, over its shards."""
    return [
        k.decode()
        for shard in log.keys.view_shards()
        async for k in log.redis.scan_iter(match=log.keys.view(shard, view_ns, "*"), count=1000)
    ]


def canonical(views: Views) -> dict[str, bytes]:
    """Each view's MessagePack encoding (what the store writes), by a key naming
    it, sorted: equal dicts mean byte-equal views."""
    out = {f"task:{t}": _enc.encode(v) for t, v in views.tasks.items()}
    out |= {f"node:{n}": _enc.encode(v) for n, v in views.nodes.items()}
    out |= {f"queue:{q}": _enc.encode(v) for q, v in views.queues.items()}
    out |= {f"stats:{SEP.join(s)}": _enc.encode(v) for s, v in views.stats_by.items()}
    out["stats"] = _enc.encode(views.stats)
    return dict(sorted(out.items()))


async def dump_namespace(log: EventLog, view_ns: str) -> dict[str, Any]:
    """Every key of a view namespace as stored, named relative to the namespace:
    strings as bytes, hashes as sorted (field, value) pairs, sorted sets as
    (member, score) pairs in order."""
    redis = log.redis
    out: dict[str, Any] = {}
    for key in await view_keys(log, view_ns):
        shard = next(
            s for s in log.keys.view_shards() if key.startswith(log.keys.view(s, view_ns, ""))
        )
        prefix = log.keys.view(shard, view_ns, "")
        kind = (await redis.type(key)).decode()
        if kind == "string":
            value: Any = await redis.get(key)
        elif kind == "hash":
            value = sorted((await redis.hgetall(key)).items())
        elif kind == "zset":
            value = await redis.zrange(key, 0, -1, withscores=True)
        else:
            raise AssertionError(f"unexpected {kind} key {key} in the views")
        out[f"{shard}/{key.removeprefix(prefix)}"] = value
    return dict(sorted(out.items()))


def _id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq)


async def log_up_to(log: EventLog, marks: dict[str, str]) -> list[Entry[Any]]:
    """The log's entries at or before each stream's mark (none of a stream
    without one): what views with that watermark were folded from."""
    return [
        e for e in await whole_log(log) if e.stream in marks and _id(e.id) <= _id(marks[e.stream])
    ]
