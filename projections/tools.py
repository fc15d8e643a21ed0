"""Tools over the log: a task's timeline, a live tail, verifying the views
against a replay, and rebuilding them.

Verify and rebuild start from the latest snapshot when there is one
(:mod:`projections.snapshot`): its views, then the entries after its
watermark. Without one they start from the first entry."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import msgspec

from eventcore.codec import Entry
from eventcore.errors import EventcoreError
from eventcore.log import EventLog, groups
from projections.points import id_lt, log_streams
from projections.replay import Views, replay
from projections.retention import is_retired, sql_positions
from projections.snapshot import (
    SnapshotHead,
    decode_batch,
    latest_head,
    snapshot_tasks,
)
from projections.store import ShardStore, ViewStore, current_views, drop_views, group_for
from projections.trim import trim_marks
from projections.views import TaskView

__all__ = [
    "RebuildResult",
    "VerifyResult",
    "ViewsMoved",
    "describe",
    "diff_views",
    "drop_views",
    "expected_views",
    "log_after",
    "rebuild",
    "seed_from_snapshot",
    "seed_shard",
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


async def whole_log(log: EventLog) -> list[Entry[Any]]:
    """Every entry of every partition and of the node stream (bad ones parked)."""
    entries: list[Entry[Any]] = []
    for stream in [*(log.keys.events(p) for p in log.keys.all_partitions()), log.keys.nodes()]:
        entries += await log.read(stream, park_bad=True)
    return entries


async def tail(
    log: EventLog, *, follow: bool, task: str | None = None, kind: str | None = None
) -> AsyncIterator[Entry[Any]]:
    """The log's events in order per stream; with ``follow``, then new ones as
    they come. Filtered by task id or event type prefix (``task.``,
    ``node.heartbeat``...)."""
    streams = [*(log.keys.events(p) for p in log.keys.all_partitions()), log.keys.nodes()]
    if task:
        streams = [log.keys.events(log.keys.partition(task))]
    positions = dict.fromkeys(streams, "0-0")
    while True:
        got = await log.tail(
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
    log: EventLog,
    marks: Mapping[str, str],
    *,
    end: str = "+",
    upto: Mapping[str, str] | None = None,
    batch: int = 10_000,
    progress: Callable[[int], None] | None = None,
) -> list[Entry[Any]]:
    """The entries of every log stream after ``marks`` (stream -> last id
    already folded; a stream not named starts at its first entry), up to
    ``end`` inclusive, or with ``upto`` up to each stream's id there (nothing
    of a stream not named: a watermark). Entries that do not decode are left
    out: the projector parks them and they are in no view."""
    out: list[Entry[Any]] = []
    read = 0
    for stream in log_streams(log.keys):
        start = "(" + marks[stream] if stream in marks else "-"
        last = end
        if upto is not None:
            if stream not in upto:
                continue
            last = upto[stream]
        while True:
            raw = await log.redis.xrange(stream, min=start, max=last, count=batch)
            out += decode_batch(log, stream, raw)[0]
            read += len(raw)
            if progress is not None and raw:
                progress(read)
            if len(raw) < batch:
                break
            start = "(" + raw[-1][0].decode()
    return out


async def expected_views(
    log: EventLog,
    *,
    upto: Mapping[str, str] | None = None,
    progress: Callable[[int], None] | None = None,
) -> Views:
    """What the views must be: the latest snapshot's views (or nothing) with
    every entry after its watermark folded on top, up to the end of the log
    or to the watermark ``upto``."""
    return await _expected(log, await starting_snapshot(log), upto, progress)


async def _expected(
    log: EventLog,
    head: SnapshotHead | None,
    upto: Mapping[str, str] | None,
    progress: Callable[[int], None] | None,
) -> Views:
    if head is None:
        return replay(await log_after(log, {}, upto=upto, progress=progress))
    tasks: dict[str, Any] = {}
    async for chunk in snapshot_tasks(log, head):
        tasks.update(chunk)
    entries = await log_after(log, head.watermark, upto=upto, progress=progress)
    return replay(entries, start=head.views(tasks))


class ViewsMoved(EventcoreError):
    """The views verified went back while being read: a rebuild switched away
    from them and dropped them."""


class VerifyResult(msgspec.Struct, frozen=True):
    problems: list[str]  # empty: the views equal the fold of the log
    watermark: dict[str, str]  # the point they were compared at
    behind: int  # log entries after that point (not yet applied), at most 10,001


def _behind(marks: Mapping[str, str], than: Mapping[str, str]) -> list[str]:
    """The streams ``marks`` has not reached ``than`` on."""
    return [s for s, i in than.items() if s not in marks or id_lt(marks[s], i)]


async def verify(
    log: EventLog,
    store: ViewStore,
    *,
    progress: Callable[[int], None] | None = None,
    wait: float = 10.0,
) -> list[str]:
    """Compare the views with a replay of the log (from the latest snapshot
    when there is one) up to the views' own watermark; an empty list means
    they are equal. See :func:`verify_at`."""
    return (await verify_at(log, store, progress=progress, wait=wait)).problems


async def verify_at(
    log: EventLog,
    store: ViewStore,
    *,
    progress: Callable[[int], None] | None = None,
    wait: float = 10.0,
    shards: list[str] | None = None,
    retention: float = 0.0,
    clock: Callable[[], float] = time.time,
) -> VerifyResult:
    """Compare the views with the log folded up to exactly the watermark they
    were read with, so a running projector and new traffic make no false
    differences, and views behind the log are not wrong, only behind.

    Each view shard is compared on its own with the fold of its own streams
    (:mod:`projections.merge` is how the shards add up to the whole log's
    views). A shard's views and its watermark are read in one transaction
    (every batch the projector writes is one script: a transaction sees all
    of it or none). Task views are found by a scan before that; a task the
    fold expects that the scan missed (created meanwhile) is read again with
    the watermark of that second read, and compared with the log folded that
    far.

    Views behind the latest snapshot's watermark cannot be compared (the
    fold starts there): this waits up to ``wait`` seconds for the projector
    to pass it, then gives up with an :class:`EventcoreError`. A rebuild that
    drops the views while they are read raises :class:`ViewsMoved`.
    ``shards``: only these shards (default: all). ``retention``: the
    views' retention (``views.retention``): a task the views no longer hold
    because it retired (:func:`projections.retention.is_retired`) is no
    difference.
    """
    head = await starting_snapshot(log)
    if head is not None and head.entries and not head.parts:
        raise EventcoreError(
            f"snapshot {head.id} predates view shards: take a new one "
            "(eventcore replay snapshot) to verify from"
        )
    problems: list[str] = []
    all_marks: dict[str, str] = {}
    streams: list[str] = []
    retired: Callable[[TaskView], bool] | None = None
    if retention > 0:
        written = await sql_positions(log, log_streams(log.keys))
        cutoff = clock() - retention
        keys = log.keys

        def retired(view: TaskView) -> bool:
            stream = keys.events(keys.partition(view.task_id))
            return is_retired(view, cutoff, written.get(stream))

    for name, shard in store.shards.items():
        if shards is not None and name not in shards:
            continue
        marks, shard_problems = await _verify_shard(log, shard, head, progress, wait, retired)
        problems += shard_problems
        all_marks.update(marks)
        streams += shard.streams
    return VerifyResult(problems, all_marks, await _count_after(log, all_marks, streams))


async def _verify_shard(
    log: EventLog,
    store: ShardStore,
    head: SnapshotHead | None,
    progress: Callable[[int], None] | None,
    wait: float,
    retired: Callable[[TaskView], bool] | None = None,
) -> tuple[dict[str, str], list[str]]:
    ids = await store.task_ids()
    marks, live = await store.read_at(ids)
    deadline = time.monotonic() + wait
    start = {s: i for s, i in head.watermark.items() if s in store.streams} if head else {}
    while late := _behind(marks, start):
        if time.monotonic() >= deadline:
            raise EventcoreError(
                f"views {store.ns!r} are behind snapshot {head.id} on {', '.join(late)}: "  # type: ignore[union-attr]
                "verify compares them from there; is the projector running?"
            )
        await asyncio.sleep(0.05)
        marks, live = await store.read_at(ids)
    expected = await _expected_shard(log, store, head, marks, progress)
    known = set(ids)
    unseen = [t for t in expected.tasks if t not in known]
    tasks = dict(expected.tasks)
    if unseen:
        later, more = await store.read_at(unseen)
        if _behind(later, marks):
            raise ViewsMoved(f"views {store.ns!r} went back while being verified")
        folded = replay(await log_after(log, marks, upto=later), start=expected)
        tasks.update((t, folded.tasks[t]) for t in unseen)
        live = msgspec.structs.replace(live, tasks={**live.tasks, **more.tasks})
    if retired is not None:
        tasks = {t: v for t, v in tasks.items() if t in live.tasks or not retired(v)}
    return marks, diff_views(live, msgspec.structs.replace(expected, tasks=tasks))


async def _expected_shard(
    log: EventLog,
    store: ShardStore,
    head: SnapshotHead | None,
    upto: Mapping[str, str],
    progress: Callable[[int], None] | None,
) -> Views:
    """What one shard's views must be: its part of the snapshot (or nothing)
    with its streams' entries after the snapshot folded on top, up to ``upto``."""
    upto = {s: i for s, i in upto.items() if s in store.streams}
    if head is None:
        return replay(await log_after(log, {}, upto=upto, progress=progress))
    part = head.parts.get(store.shard)
    tasks: dict[str, Any] = {}
    async for chunk in snapshot_tasks(log, head):
        tasks.update((t, v) for t, v in chunk.items() if log.keys.shard_of_task(t) == store.shard)
    entries = await log_after(log, head.watermark, upto=upto, progress=progress)
    start = part.views(tasks) if part is not None else Views(tasks=tasks)
    return replay(entries, start=start)


async def _count_after(
    log: EventLog, marks: Mapping[str, str], streams: list[str], cap: int = 10_001
) -> int:
    """How many entries of ``streams`` lie after ``marks`` (at most ``cap``)."""
    count = 0
    for stream in streams:
        start = "(" + marks[stream] if stream in marks else "-"
        count += len(await log.redis.xrange(stream, min=start, max="+", count=cap - count))
        if count >= cap:
            break
    return count


class RebuildResult(msgspec.Struct, frozen=True):
    views: str
    previous: str
    entries: int  # entries folded (after the snapshot's watermark, if any)
    seconds: float
    snapshot: str = ""  # the snapshot it started from, "" for none
    seeded: int = 0  # task views taken from the snapshot


async def rebuild(
    log: EventLog,
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

    previous = await current_views(log)
    view_ns = f"r{int(time.time() * 1000)}{secrets.token_hex(3)}"  # unique even within a ms
    store = ViewStore(log, view_ns)
    t0 = time.monotonic()

    def report(done: int) -> None:
        if progress is not None:
            progress(done, time.monotonic() - t0)

    head = await starting_snapshot(log)
    projector = Projector(
        log, store, batch=batch, consumer="rebuild", feed_after=ViewStore(log, previous)
    )
    try:
        seeded = 0
        if head is not None:
            seeded = await seed_from_snapshot(log, store, head, progress=report)
        while await projector.step(block_ms=None):
            report(seeded + projector.applied)
    except BaseException:
        # A half-built namespace and its group would only hold trims back.
        await asyncio.shield(drop_views(log, view_ns))
        raise
    await log.redis.set(log.keys.view_pointer(), view_ns)
    await drop_views(log, previous)
    return RebuildResult(
        view_ns,
        previous,
        projector.applied,
        time.monotonic() - t0,
        snapshot=head.id if head is not None else "",
        seeded=seeded,
    )


async def seed_from_snapshot(
    log: EventLog,
    store: ViewStore,
    head: SnapshotHead,
    *,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Seed every shard of ``store`` from a snapshot (:func:`seed_shard`).
    Returns the number of task views written."""
    written = 0
    for shard in store.shards.values():
        written += await seed_shard(log, shard, head)
        if progress is not None:
            progress(written)
    return written


async def seed_shard(log: EventLog, store: ShardStore, head: SnapshotHead) -> int:
    """Start the projector group of the shard's streams right after a
    snapshot's watermark, then write the shard's part of the snapshot into
    ``store`` (no feed entries: nothing changed) with its watermark. Returns
    the number of task views written.

    The group comes first: from then on a trim keeps every entry after the
    watermark, however long the views take to write."""
    if head.entries and not head.parts:
        raise EventcoreError(
            f"snapshot {head.id} predates view shards: take a new one "
            "(eventcore replay snapshot) before seeding views from it"
        )
    group = group_for(store.ns)
    for stream in store.streams:
        start = head.watermark.get(stream, "0")
        if not await groups.ensure_group(log.redis, stream, group, start_id=start):
            await log.redis.xgroup_setid(stream, group, start)
    await _check_not_trimmed_past(log, head)
    written = 0
    async for chunk in snapshot_tasks(log, head):
        mine = {t: v for t, v in chunk.items() if log.keys.shard_of_task(t) == store.shard}
        if mine:
            await store.write(Views(), Views(tasks=mine), {}, feed=False)
            written += len(mine)
    part = head.parts.get(store.shard)
    marks = {s: i for s, i in head.watermark.items() if s in store.streams}
    await store.write(Views(), part.views() if part else Views(), marks, feed=False)
    return written


async def starting_snapshot(log: EventLog) -> SnapshotHead | None:
    """The snapshot a replay must start from: the latest one. None when there
    is none, which is right only for a log that was never trimmed."""
    head = await latest_head(log)
    if head is None and await trim_marks(log):
        raise EventcoreError(
            "the log has been trimmed but there is no snapshot to start from "
            f"({log.keys.snapshot_pointer()} is missing): the views of the trimmed "
            "entries are lost"
        )
    return head


async def _check_not_trimmed_past(log: EventLog, head: SnapshotHead) -> None:
    """Refuse a snapshot whose later entries a trim (behind a newer snapshot)
    has already removed."""
    for stream, mark in (await trim_marks(log)).items():
        if id_lt(head.watermark.get(stream, "0-0"), mark):
            raise EventcoreError(
                f"{stream} was trimmed up to {mark}, past snapshot {head.id}'s watermark: "
                "a newer snapshot was published meanwhile; run it again"
            )
