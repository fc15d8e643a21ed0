"""Tools over the log: a task's timeline, a live tail, verifying the views
against a replay, and rebuilding them.

Verify and rebuild start from the latest snapshot when there is one
(:mod:`projections.snapshot`): its views, then the entries after its
watermark. Without one they start from the first entry."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import msgspec
from redis.exceptions import ResponseError

from eventcore import groups
from eventcore.codec import Entry
from eventcore.errors import EventcoreError
from eventcore.log import EventLog
from projections.points import id_lt, log_streams
from projections.replay import Views, replay
from projections.snapshot import (
    SnapshotHead,
    decode_batch,
    latest_head,
    snapshot_tasks,
)
from projections.store import ViewStore, current_views, group_for
from projections.trim import trim_marks

__all__ = [
    "RebuildResult",
    "describe",
    "diff_views",
    "drop_views",
    "expected_views",
    "log_after",
    "rebuild",
    "seed_from_snapshot",
    "starting_snapshot",
    "tail",
    "verify",
    "whole_log",
]


def describe(entry: Entry[Any], *, as_json: bool = False) -> str:
    """One line for an event: time, stream id, type and its fields."""
    data = msgspec.to_builtins(entry.event)
    if as_json:
        return json.dumps({"stream": entry.stream, "id": entry.id, **data}, default=str)
    at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry.event.at))
    kind = data.pop("type")
    data.pop("at", None)
    data.pop("v", None)
    fields = " ".join(
        f"{k}={json.dumps(v, default=str)}" for k, v in data.items() if v not in (None, "", [], {})
    )
    return f"{at} {entry.id:>20} {kind:<22} {fields}"


async def whole_log(elog: EventLog) -> list[Entry[Any]]:
    """Every entry of every partition and of the node stream (bad ones parked)."""
    entries: list[Entry[Any]] = []
    for stream in [*(elog.keys.events(p) for p in elog.keys.all_partitions()), elog.keys.nodes()]:
        entries += await elog.read(stream, park_bad=True)
    return entries


async def tail(
    elog: EventLog, *, follow: bool, task: str | None = None, kind: str | None = None
) -> AsyncIterator[Entry[Any]]:
    """The log's events in order per stream; with ``follow``, then new ones as
    they come. Filtered by task id or event type prefix (``task.``,
    ``node.heartbeat``...)."""
    streams = [*(elog.keys.events(p) for p in elog.keys.all_partitions()), elog.keys.nodes()]
    if task:
        streams = [elog.keys.events(elog.keys.partition(task))]
    positions = dict.fromkeys(streams, "0-0")
    while True:
        got = await elog.tail(
            positions, count=1000, block_ms=1000 if follow else None, park_bad=True
        )
        for entry in got:
            positions[entry.stream] = entry.id
            if task and getattr(entry.event, "task_id", None) != task:
                continue
            if kind and not entry.event.type_name().startswith(kind):
                continue
            yield entry
        if not got and not follow:
            return


def diff_views(live: Views, expected: Views) -> list[str]:
    """Human-readable differences between stored views and a replay."""
    enc = msgspec.json.encode
    out: list[str] = []
    for name in ("tasks", "nodes", "queues", "stats_by"):
        a, b = getattr(live, name), getattr(expected, name)
        for key in sorted(set(a) | set(b), key=str):
            if key not in a:
                out.append(f"{name}[{key}]: missing from the views")
            elif key not in b:
                out.append(f"{name}[{key}]: in the views but not in the log")
            elif enc(a[key]) != enc(b[key]):
                out.append(f"{name}[{key}]: differs")
    if enc(live.stats) != enc(expected.stats):
        out.append("stats: differs")
    return out


async def log_after(
    elog: EventLog,
    marks: Mapping[str, str],
    *,
    end: str = "+",
    batch: int = 10_000,
    progress: Callable[[int], None] | None = None,
) -> list[Entry[Any]]:
    """The entries of every log stream after ``marks`` (stream -> last id
    already folded; a stream not named starts at its first entry), up to
    ``end`` inclusive. Entries that do not decode are left out: the projector
    parks them and they are in no view."""
    out: list[Entry[Any]] = []
    read = 0
    for stream in log_streams(elog.keys):
        start = "(" + marks[stream] if stream in marks else "-"
        while True:
            raw = await elog.redis.xrange(stream, min=start, max=end, count=batch)
            out += decode_batch(elog, stream, raw)[0]
            read += len(raw)
            if progress is not None and raw:
                progress(read)
            if len(raw) < batch:
                break
            start = "(" + raw[-1][0].decode()
    return out


async def expected_views(elog: EventLog, *, progress: Callable[[int], None] | None = None) -> Views:
    """What the views must be: the latest snapshot's views (or nothing) with
    every entry after its watermark folded on top."""
    head = await starting_snapshot(elog)
    if head is None:
        return replay(await log_after(elog, {}, progress=progress))
    tasks: dict[str, Any] = {}
    async for chunk in snapshot_tasks(elog, head):
        tasks.update(chunk)
    entries = await log_after(elog, head.watermark, progress=progress)
    return replay(entries, start=head.views(tasks))


async def verify(
    elog: EventLog, store: ViewStore, *, progress: Callable[[int], None] | None = None
) -> list[str]:
    """Replay the log into memory (a shadow of the views), from the latest
    snapshot when there is one, and compare with the stored views; an empty
    list means they are equal.

    Run it when the projector has caught up (or stopped): views behind the log
    show up as differences.
    """
    expected = await expected_views(elog, progress=progress)
    live = await store.load(expected.tasks)
    stored_ids = [
        k.decode().rsplit(":", 1)[1]
        async for k in elog.redis.scan_iter(match=store.task_key("*"), count=1000)
    ]
    extra = set(stored_ids) - set(expected.tasks)
    if extra:
        live = msgspec.structs.replace(
            live, tasks={**live.tasks, **(await store.load(extra)).tasks}
        )
    return diff_views(live, expected)


class RebuildResult(msgspec.Struct, frozen=True):
    views: str
    previous: str
    entries: int  # entries folded (after the snapshot's watermark, if any)
    seconds: float
    snapshot: str = ""  # the snapshot it started from, "" for none
    seeded: int = 0  # task views taken from the snapshot


async def rebuild(
    elog: EventLog,
    *,
    batch: int = 20_000,
    progress: Callable[[int, float], None] | None = None,
) -> RebuildResult:
    """Fold the log into a fresh view namespace, then switch readers and the
    live projector to it, and drop the old one.

    With a snapshot, the fresh views start as the snapshot's and the rebuild's
    group starts at its watermark; without one, at the start of the log.
    Live traffic keeps flowing: the rebuild reads through its own consumer
    group until it has caught up, then sets the pointer. A projector started
    with ``follow_pointer`` moves to the new namespace and carries on with the
    rebuild's group from where it stopped. ``progress`` gets the views seeded
    plus the entries folded so far, and the seconds since the start.
    """
    from projections.runner import Projector  # the runner imports this module's neighbours

    previous = await current_views(elog)
    view_ns = f"r{int(time.time() * 1000)}{secrets.token_hex(3)}"  # unique even within a ms
    store = ViewStore(elog, view_ns)
    t0 = time.monotonic()

    def report(done: int) -> None:
        if progress is not None:
            progress(done, time.monotonic() - t0)

    head = await starting_snapshot(elog)
    projector = Projector(
        elog, store, batch=batch, consumer="rebuild", feed_after=ViewStore(elog, previous)
    )
    try:
        seeded = 0
        if head is not None:
            seeded = await seed_from_snapshot(elog, store, head, progress=report)
        while await projector.step(block_ms=None):
            report(seeded + projector.applied)
    except BaseException:
        # A half-built namespace and its group would only hold trims back.
        await asyncio.shield(drop_views(elog, view_ns))
        raise
    await elog.redis.set(elog.keys.view_pointer(), view_ns)
    await drop_views(elog, previous)
    return RebuildResult(
        view_ns,
        previous,
        projector.applied,
        time.monotonic() - t0,
        snapshot=head.id if head is not None else "",
        seeded=seeded,
    )


async def seed_from_snapshot(
    elog: EventLog,
    store: ViewStore,
    head: SnapshotHead,
    *,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Start the store's projector group right after a snapshot's watermark,
    then write the snapshot's views into ``store`` (no feed entries: nothing
    changed) with its watermark. Returns the number of task views written.

    The group comes first: from then on a trim keeps every entry after the
    watermark, however long the views take to write."""
    group = group_for(store.ns)
    for stream in log_streams(elog.keys):
        start = head.watermark.get(stream, "0")
        if not await groups.ensure_group(elog.redis, stream, group, start_id=start):
            await elog.redis.xgroup_setid(stream, group, start)
    await _check_not_trimmed_past(elog, head)
    written = 0
    async for chunk in snapshot_tasks(elog, head):
        await store.write(Views(), Views(tasks=chunk), {}, feed=False)
        written += len(chunk)
        if progress is not None:
            progress(written)
    await store.write(Views(), head.views(), head.watermark, feed=False)
    return written


async def starting_snapshot(elog: EventLog) -> SnapshotHead | None:
    """The snapshot a replay must start from: the latest one. None when there
    is none, which is right only for a log that was never trimmed."""
    head = await latest_head(elog)
    if head is None and await trim_marks(elog):
        raise EventcoreError(
            "the log has been trimmed but there is no snapshot to start from "
            f"({elog.keys.snapshot_pointer()} is missing): the views of the trimmed "
            "entries are lost"
        )
    return head


async def _check_not_trimmed_past(elog: EventLog, head: SnapshotHead) -> None:
    """Refuse a snapshot whose later entries a trim (behind a newer snapshot)
    has already removed."""
    for stream, mark in (await trim_marks(elog)).items():
        if id_lt(head.watermark.get(stream, "0-0"), mark):
            raise EventcoreError(
                f"{stream} was trimmed up to {mark}, past snapshot {head.id}'s watermark: "
                "a newer snapshot was published meanwhile; run it again"
            )


async def drop_views(elog: EventLog, view_ns: str) -> int:
    """Delete a view namespace's keys and its projector group; returns keys deleted."""
    deleted = 0
    batch: list[bytes] = []
    async for key in elog.redis.scan_iter(match=elog.keys.view(view_ns, "*"), count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            deleted += await elog.redis.unlink(*batch)
            batch = []
    if batch:
        deleted += await elog.redis.unlink(*batch)
    group = group_for(view_ns)
    for stream in [*(elog.keys.events(p) for p in elog.keys.all_partitions()), elog.keys.nodes()]:
        with contextlib.suppress(ResponseError):  # no such group or stream: nothing to drop
            await elog.redis.xgroup_destroy(stream, group)
    return deleted
