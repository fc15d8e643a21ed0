"""The one-time move of keys from earlier layouts.

- The node keys, the control streams, the parked stream, the web's keys and
  the blobs once had no hash tag (``ec:nodes``, ``ec:ctl:all``,
  ``ec:blob:<sha256>``; see :mod:`eventcore.keys`).
- With several partitions, partition ``p``'s keys were under ``{p<p>}``; the
  tags are now spread over the cluster's slots
  (:func:`eventcore.keys.spread_tag`), so most partitions have a new tag.
- The views were kept in one slot (``ec:{v}:<views>:...``, one feed
  ``ec:{v}:feed``); they are now in view shards. Views are the fold of the
  log, so the old ones are dropped, not moved: the projector folds the log
  into the shards again (from the start of each stream).

A deployment with data under the old names would lose its node history,
control streams, tokens and tasks when it upgrades, so ``eventcore events
migrate`` renames them, on a single server, with the stack stopped. It is
idempotent: a name already moved is not there any more, and a new name that
already holds data is left alone and reported (nothing is merged or
overwritten).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from redis.asyncio import Redis

from eventcore.codec import text
from eventcore.errors import EventcoreError
from eventcore.keys import Keys, check_name
from eventcore.log.spread import is_cluster

__all__ = ["Migration", "rename_legacy_keys"]


@dataclass
class Migration:
    """What a rename did: ``renamed`` old -> new, ``kept`` old names left
    because the new name already holds data."""

    renamed: list[tuple[str, str]] = field(default_factory=list)
    kept: list[tuple[str, str]] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)


async def _legacy_pairs(redis: Redis, keys: Keys) -> list[tuple[str, str]]:
    pairs = list(keys.legacy_names())
    ctl = keys.legacy_control_prefix()
    async for raw in redis.scan_iter(match=f"{ctl}*", count=1000):
        name = text(raw)
        try:
            node = check_name("node", name[len(ctl) :])
        except ValueError:
            continue  # not a key eventcore wrote
        pairs.append((name, keys.control(node)))
    blob = keys.legacy_blob_prefix()
    async for raw in redis.scan_iter(match=f"{blob}*", count=1000):
        name = text(raw)
        digest = name[len(blob) :]
        if digest and "{" not in digest:
            pairs.append((name, keys.blob(digest)))
    for p in keys.all_partitions():
        old_prefix = keys.legacy_partition_prefix(p)
        new_prefix = keys.events(p).removesuffix("events")
        if old_prefix == new_prefix:
            continue
        async for raw in redis.scan_iter(match=f"{old_prefix}*", count=1000):
            name = text(raw)
            pairs.append((name, new_prefix + name[len(old_prefix) :]))
    return pairs


async def _old_views(redis: Redis, keys: Keys) -> list[str]:
    """The keys of views kept in one slot, before view shards."""
    keep = {keys.view_pointer(), keys.projectors(), keys.snapshot_pointer()}
    snapshots = keys.snapshot("")
    return [
        name
        async for raw in redis.scan_iter(match=keys.legacy_views("*"), count=1000)
        if (name := text(raw)) not in keep and not name.startswith(snapshots)
    ]


async def rename_legacy_keys(redis: Redis, keys: Keys) -> Migration:
    """Rename every key of ``keys``' deployment still under its old name to
    its new one (RENAMENX, so the TTL of a blob goes with it). Single server
    only: a cluster never held the old names, and RENAME across slots fails
    there."""
    if is_cluster(redis):
        raise EventcoreError(
            "the old key names predate Redis Cluster support: migrate on the single "
            "server that holds them, before moving the data to a cluster"
        )
    out = Migration()
    for old, new in await _legacy_pairs(redis, keys):
        if not await redis.exists(old):
            continue
        if await redis.renamenx(old, new):
            out.renamed.append((old, new))
        else:
            out.kept.append((old, new))
    for name in await _old_views(redis, keys):
        await redis.unlink(name)
        out.dropped.append(name)
    return out
