"""Reads over keys in several slots: one command per slot on Redis Cluster.

A multi-key command must touch one slot on a cluster, yet some reads cover
keys of several tags at once: the projector reads every partition's log and
the node stream, a worker waits on the work streams of every partition,
``events tail`` follows all of them. On a single server each stays one
command; on a cluster the keys are grouped by slot and each group gets its
own command, all sent concurrently.

Blocking reads: one blocking read per slot group, one after another, would
wait up to N times the block time. So on a cluster a read first asks every
group without blocking, concurrently, and returns what any of them had; only
when all were empty does it block, again concurrently, so the whole call
waits about one block time. A group that gets an entry returns at once, but
the call returns when every group has answered: on a cluster, the first entry
after a quiet spell can wait up to one block time for the other groups'
reads to time out. Those reads are not cancelled: a cancelled XREADGROUP may
already have delivered entries to the consumer's pending list.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

__all__ = ["is_cluster", "mget", "slot_groups", "xread", "xreadgroup"]

StreamReply = list[tuple[Any, list[Any]]]


def is_cluster(redis: Any) -> bool:
    """Whether ``redis`` is a Redis Cluster client."""
    return isinstance(redis, RedisCluster)


def slot_groups(redis: Any, keys: Iterable[str]) -> list[list[str]]:
    """``keys`` grouped by slot on a cluster (in first-seen order), else one group."""
    keys = list(keys)
    if not is_cluster(redis):
        return [keys]
    groups: dict[int, list[str]] = {}
    for key in keys:
        groups.setdefault(key_slot(key.encode()), []).append(key)
    return list(groups.values())


def _streams(reply: Any) -> StreamReply:
    # RESP2 answers a list of [stream, entries]; RESP3 a map.
    if not reply:
        return []
    if isinstance(reply, Mapping):
        return [(s, e) for s, e in reply.items()]
    return [(s, e) for s, e in reply]


async def _spread(read: Any, groups: Sequence[list[str]], block: int | None) -> StreamReply:
    if len(groups) == 1:
        return _streams(await read(groups[0], block))
    replies = await asyncio.gather(*(read(g, None) for g in groups))
    out = [item for reply in replies for item in _streams(reply)]
    if out or block is None:
        return out
    replies = await asyncio.gather(*(read(g, block) for g in groups))
    return [item for reply in replies for item in _streams(reply)]


async def xread(
    redis: Any, positions: Mapping[str, str], *, count: int | None, block: int | None
) -> StreamReply:
    """XREAD over ``positions`` (``{stream: last id}``), split per slot on a
    cluster; the reply as ``[(stream, entries), ...]``."""

    async def read(streams: list[str], blk: int | None) -> Any:
        return await redis.xread({s: positions[s] for s in streams}, count=count, block=blk)

    return await _spread(read, slot_groups(redis, positions), block)


async def xreadgroup(
    redis: Any,
    group: str,
    consumer: str,
    positions: Mapping[str, str],
    *,
    count: int | None,
    block: int | None,
) -> StreamReply:
    """XREADGROUP over ``positions``, split per slot on a cluster; the reply
    as ``[(stream, entries), ...]``."""

    async def read(streams: list[str], blk: int | None) -> Any:
        return await redis.xreadgroup(
            group, consumer, {s: positions[s] for s in streams}, count=count, block=blk
        )

    return await _spread(read, slot_groups(redis, positions), block)


async def mget(redis: Any, keys: Sequence[str]) -> list[Any]:
    """MGET of ``keys``, split per slot on a cluster; values in the order given."""
    if not is_cluster(redis):
        return list(await redis.mget(keys)) if keys else []
    groups = slot_groups(redis, keys)
    replies = await asyncio.gather(*(redis.mget(g) for g in groups))
    found = {k: v for g, reply in zip(groups, replies) for k, v in zip(g, reply)}
    return [found[k] for k in keys]
