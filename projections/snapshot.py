"""Snapshots of the views: every view, and the watermark (the last entry id
folded, per stream) they are the fold of.

A snapshot is what a rebuild, ``replay verify`` and as-of queries start from
instead of the first entry, and what lets the log be trimmed
(:mod:`projections.trim`): the views of the entries below its watermark live on
in it.

Layout: one hash per snapshot, ``keys.snapshot(id)``, with a field
``t:<task id>`` per task view and a field ``head`` (:class:`SnapshotHead`:
the watermark, the node, queue and stats views, counts), all MessagePack.
``keys.snapshot_pointer()`` names the latest one. A snapshot is written into
a staging hash (with a TTL, so a crashed writer leaves nothing for long) and
published by one script that checks it is complete, renames it, moves the
pointer and drops the snapshot it replaces. Readers see the old snapshot or
the new one, never half of one.

A new snapshot starts from the latest one (a server-side copy) and folds only
the entries after its watermark, loading the task views each batch touches:
memory stays bounded by the batch, whatever the number of tasks.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
from redis.exceptions import ResponseError

from eventcore.codec import Entry, text
from eventcore.errors import DecodeError, EventcoreError
from eventcore.keys import NODE_SHARD
from eventcore.log import EventLog
from projections.merge import merge_views
from projections.points import id_lt, log_streams
from projections.replay import Views, replay
from projections.scripts import ViewScripts
from projections.views import NodeView, QueueView, StatsView, TaskView

__all__ = [
    "SnapshotHead",
    "SnapshotPart",
    "decode_batch",
    "latest_head",
    "load_snapshot",
    "log_trimmed",
    "snapshot_tasks",
    "take_snapshot",
    "task_views",
]

HEAD = b"head"
TASK = "t:"
# A staging hash lives this long after its last write: long enough for any
# batch, short enough that a crashed writer's leftovers go away by themselves.
STAGING_TTL = 3600

_enc = msgspec.msgpack.Encoder()
_task = msgspec.msgpack.Decoder(TaskView)


class SnapshotPart(msgspec.Struct, frozen=True, kw_only=True):
    """One view shard's node, queue and stats views in a snapshot: what a
    rebuild or a new projector seeds that shard with."""

    nodes: dict[str, NodeView] = {}
    queues: dict[str, QueueView] = {}
    stats: StatsView = StatsView()
    stats_by: list[tuple[str, str, StatsView]] = []

    def views(self, tasks: dict[str, TaskView] | None = None) -> Views:
        """The part's views, with the given task views."""
        return _views(self, tasks)


def _views(small: SnapshotPart | SnapshotHead, tasks: dict[str, TaskView] | None) -> Views:
    return Views(
        tasks=tasks or {},
        nodes=small.nodes,
        queues=small.queues,
        stats=small.stats,
        stats_by={(q, k): v for q, k, v in small.stats_by},
    )


class SnapshotHead(msgspec.Struct, frozen=True, kw_only=True):
    """Everything in a snapshot but the task views. The node, queue and stats
    views are there merged (the views of the whole log) and per view shard
    (``parts``; empty in snapshots taken before views had shards)."""

    id: str
    created_at: float
    watermark: dict[str, str]  # stream key -> last entry id folded in
    tasks: int  # task views in the snapshot
    entries: int  # entries folded in, over this snapshot and those it grew from
    undecodable: int = 0  # entries left out because they do not decode (parked)
    nodes: dict[str, NodeView] = {}
    queues: dict[str, QueueView] = {}
    stats: StatsView = StatsView()
    stats_by: list[tuple[str, str, StatsView]] = []
    parts: dict[str, SnapshotPart] = {}

    def views(self, tasks: dict[str, TaskView] | None = None) -> Views:
        """The snapshot's views (merged over the shards), with the given task views."""
        return _views(self, tasks)


_head = msgspec.msgpack.Decoder(SnapshotHead)


def _head_views(views: Views) -> dict[str, Any]:
    """The head's (or a part's) fields for the views other than tasks."""
    return {
        "nodes": views.nodes,
        "queues": views.queues,
        "stats": views.stats,
        "stats_by": [(q, k, v) for (q, k), v in sorted(views.stats_by.items())],
    }


# -- reading -----------------------------------------------------------------------


async def latest_head(log: EventLog) -> SnapshotHead | None:
    """The latest snapshot's head, or None when there is no snapshot."""
    snap_id = await log.redis.get(log.keys.snapshot_pointer())
    if snap_id is None:
        return None
    raw = await log.redis.hget(log.keys.snapshot(text(snap_id)), HEAD)
    if raw is None:
        raise EventcoreError(
            f"{log.keys.snapshot_pointer()} names snapshot {text(snap_id)!r}, "
            f"but {log.keys.snapshot(text(snap_id))} has no head"
        )
    return _head.decode(raw)


async def snapshot_tasks(
    log: EventLog, head: SnapshotHead, *, chunk: int = 1000
) -> AsyncIterator[dict[str, TaskView]]:
    """The snapshot's task views, a chunk at a time."""
    out: dict[str, TaskView] = {}
    async for field, value in log.redis.hscan_iter(log.keys.snapshot(head.id), count=chunk):
        name = text(field)
        if name.startswith(TASK):
            out[name[len(TASK) :]] = _task.decode(value)
            if len(out) >= chunk:
                yield out
                out = {}
    if out:
        yield out


async def task_views(log: EventLog, key: str, task_ids: list[str]) -> dict[str, TaskView]:
    """The views of these tasks held in a snapshot hash (missing ones left out)."""
    if not task_ids:
        return {}
    raw = await log.redis.hmget(key, [TASK + t for t in task_ids])
    return {t: _task.decode(v) for t, v in zip(task_ids, raw) if v is not None}


async def load_snapshot(log: EventLog) -> tuple[SnapshotHead, Views] | None:
    """The latest snapshot with every view in memory, or None."""
    head = await latest_head(log)
    if head is None:
        return None
    tasks: dict[str, TaskView] = {}
    async for chunk in snapshot_tasks(log, head):
        tasks.update(chunk)
    return head, head.views(tasks)


def decode_batch(log: EventLog, stream: str, raw: list[Any]) -> tuple[list[Entry[Any]], list[str]]:
    """Decode raw entries; undecodable ones are left out and their ids returned
    (the projector parks them, and they are in no view)."""
    codec = log.codec_of(stream)
    entries: list[Entry[Any]] = []
    bad: list[str] = []
    for eid, fields in raw:
        try:
            entries.append(codec.decode_fields(stream, eid, fields))
        except DecodeError as exc:
            bad.append(exc.entry_id)
    return entries, bad


# -- writing -----------------------------------------------------------------------


async def take_snapshot(
    log: EventLog,
    *,
    batch: int = 5000,
    progress: Callable[[int], None] | None = None,
    retire: Callable[[TaskView], bool] | None = None,
) -> SnapshotHead:
    """Fold the log into a new snapshot and publish it as the latest.

    Starts from the latest snapshot when there is one and folds the entries
    after its watermark, up to each stream's newest entry when the call began
    (entries that arrive meanwhile go to the next snapshot). With ``retire``,
    the task views it says yes to are left out (the views' retention: see
    :mod:`projections.retention`).
    """
    redis = log.redis
    keys = log.keys
    previous = await latest_head(log)
    replaced = previous
    if previous is not None and previous.entries and not previous.parts:
        # Taken before views had shards: its merged views cannot be split
        # into the shards' parts, so start again from the whole log.
        if await log_trimmed(log):
            raise EventcoreError(
                f"snapshot {previous.id} predates view shards and the log was trimmed "
                "behind it: it cannot seed sharded views (rebuild from an export instead)"
            )
        previous = None
    snap_id = str(int(time.time() * 1000))
    if replaced is not None and not id_lt(replaced.id, snap_id):
        snap_id = str(int(replaced.id) + 1)
    staging = keys.snapshot_partial(snap_id)
    await redis.delete(staging)
    if previous is not None:
        await redis.copy(keys.snapshot(previous.id), staging)
    marks = dict(previous.watermark) if previous is not None else {}
    parts = previous.parts if previous is not None else {}
    small = {
        shard: parts[shard].views() if shard in parts else Views() for shard in keys.view_shards()
    }
    tasks = previous.tasks if previous is not None else 0
    folded = previous.entries if previous is not None else 0
    undecodable = previous.undecodable if previous is not None else 0
    done = 0
    streams = log_streams(keys)
    async with redis.pipeline(transaction=False) as pipe:
        for stream in streams:
            pipe.xrevrange(stream, count=1)
        newest = await pipe.execute()
    for stream, last in zip(streams, newest):
        if not last:
            continue
        end = text(last[0][0])
        start = "(" + marks[stream] if stream in marks else "-"
        while stream not in marks or id_lt(marks[stream], end):
            raw = await redis.xrange(stream, min=start, max=end, count=batch)
            if not raw:
                break
            entries, bad = decode_batch(log, stream, raw)
            touched = list(
                dict.fromkeys(e.event.task_id for e in entries if hasattr(e.event, "task_id"))
            )
            before = await task_views(log, staging, touched)
            shard = keys.shard_of_stream(stream)
            after = replay(entries, start=msgspec.structs.replace(small[shard], tasks=before))
            changed = {
                TASK + t: _enc.encode(v) for t, v in after.tasks.items() if before.get(t) != v
            }
            async with redis.pipeline(transaction=False) as pipe:
                if changed:
                    pipe.hset(staging, mapping=changed)  # type: ignore[arg-type]
                pipe.expire(staging, STAGING_TTL)
                replies = await pipe.execute()
            if changed:
                tasks += int(replies[0])  # fields that are new: tasks not seen before
            small[shard] = msgspec.structs.replace(after, tasks={})
            marks[stream] = text(raw[-1][0])
            start = "(" + marks[stream]
            folded += len(entries)
            undecodable += len(bad)
            done += len(raw)
            if progress is not None:
                progress(done)
    if retire is not None:
        tasks -= await _leave_out(log, staging, retire)
    told = small.pop(NODE_SHARD)
    head = SnapshotHead(
        id=snap_id,
        created_at=time.time(),
        watermark=dict(sorted(marks.items())),
        tasks=tasks,
        entries=folded,
        undecodable=undecodable,
        parts={
            shard: SnapshotPart(**_head_views(views))
            for shard, views in {**small, NODE_SHARD: told}.items()
        },
        **_head_views(merge_views(told, list(small.values()))),
    )
    await redis.hset(staging, HEAD, _enc.encode(head))
    prev_id = replaced.id if replaced is not None else ""
    try:
        await ViewScripts(redis).publish_snapshot(
            pointer=keys.snapshot_pointer(),
            staging=staging,
            final=keys.snapshot(snap_id),
            previous=keys.snapshot(prev_id) if prev_id else None,
            snapshot_id=snap_id,
            fields=tasks + 1,
            previous_id=prev_id,
        )
    except ResponseError as exc:
        await redis.delete(staging)
        raise EventcoreError(f"snapshot {snap_id} not published: {exc}") from None
    return head


async def _leave_out(
    log: EventLog, staging: str, retire: Callable[[TaskView], bool], chunk: int = 1000
) -> int:
    """Delete from a staging snapshot the task views ``retire`` says yes to;
    how many."""
    gone: list[str] = []
    async for field, value in log.redis.hscan_iter(staging, match=TASK + "*", count=chunk):
        if retire(_task.decode(value)):
            gone.append(text(field))
    for i in range(0, len(gone), chunk):
        await log.redis.hdel(staging, *gone[i : i + chunk])
    return len(gone)


async def log_trimmed(log: EventLog) -> bool:
    """Whether any log stream has been trimmed."""
    async with log.redis.pipeline(transaction=False) as pipe:
        for stream in log_streams(log.keys):
            pipe.exists(log.keys.trim_mark(stream))
        return any(await pipe.execute())
