"""Trimming the log behind a snapshot, without losing work or views.

Each task log stream and the node stream is trimmed (XTRIM MINID) below the
lowest of:

- the latest snapshot's watermark for it: the views of what goes are in the
  snapshot, and rebuilds, verify and as-of start there;
- for every consumer group on the stream, its oldest pending entry and its
  last-delivered id: a group never loses an entry it has not read or not
  acked (the projector's group, a rebuild's group, any other reader's).

The trim script reads the groups and trims in one step, and records the
lowest id kept in the stream's trim mark. Work streams are never trimmed:
acked work entries are deleted when they are acked, so everything in a work
stream is backlog or in flight.

Then the ``done`` hash (task -> outcome, which makes ``settle`` answer stale
to a second outcome) forgets the tasks whose every event is below the trim
mark: the task ended before the snapshot, so no worker holds it, and nothing
legitimate can append to it again. A task that still has a work entry (a
duplicate from a re-sent submit), sits in the delayed set or has a cancel
request on record keeps its field.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

import msgspec

from eventcore.codec import text
from eventcore.errors import EventcoreError
from eventcore.log import EventLog, spread
from eventcore.transitions import TERMINAL
from projections.points import id_lt, log_streams
from projections.scripts import ViewScripts
from projections.snapshot import SnapshotHead, latest_head, snapshot_tasks
from projections.views import TaskView

__all__ = ["StreamTrim", "TrimResult", "busy_tasks", "prune_done", "trim_log", "trim_marks"]


class StreamTrim(msgspec.Struct, frozen=True):
    """How one stream was trimmed."""

    stream: str
    watermark: str  # the snapshot's watermark for the stream
    minid: str  # entries below this were removed
    trimmed: int
    held_by: str  # the group that held the trim below the watermark, or ""


class TrimResult(msgspec.Struct, frozen=True):
    snapshot: str
    streams: list[StreamTrim]
    done_pruned: int


async def trim_log(
    log: EventLog,
    *,
    prune: bool = True,
    before: str | None = None,
    retired: Iterable[TaskView] = (),
) -> TrimResult:
    """Trim every log stream behind the latest snapshot (see the module
    docstring for the rules), and, with ``before`` (an entry id), only below
    it too, keeping recent raw history for tools that read it; then, with
    ``prune``, the ``done`` hashes: of the snapshot's ended tasks, and of the
    ``retired`` ones the snapshot left out (:mod:`projections.retention`)."""
    head = await latest_head(log)
    if head is None:
        raise EventcoreError(
            "there is no snapshot to trim behind: run `eventcore replay snapshot` first"
        )
    keys = log.keys
    scripts = ViewScripts(log.redis)
    out: list[StreamTrim] = []
    for stream in log_streams(keys):
        mark = head.watermark.get(stream)
        if mark is None:
            continue  # the snapshot holds nothing of this stream
        limit = before if before is not None and id_lt(before, mark) else mark
        minid, trimmed, held = await scripts.trim_stream(
            stream=stream, trim_mark=keys.trim_mark(stream), limit=limit
        )
        out.append(StreamTrim(stream, mark, minid, trimmed, held))
    pruned = await prune_done(log, head, retired) if prune else 0
    return TrimResult(head.id, out, pruned)


async def trim_marks(log: EventLog) -> dict[str, str]:
    """The lowest id kept, per log stream that has been trimmed."""
    streams = log_streams(log.keys)
    values = await spread.mget(log.redis, [log.keys.trim_mark(s) for s in streams])
    return {s: text(v) for s, v in zip(streams, values) if v is not None}


async def busy_tasks(log: EventLog, p: int, *, batch: int = 1000) -> set[str]:
    """Tasks with an entry in a work stream of partition ``p`` (waiting or held)."""
    busy: set[str] = set()
    async for key in log.redis.scan_iter(match=log.keys.work_pattern(p), _type="stream"):
        start = "-"
        while True:
            raw = await log.redis.xrange(key, min=start, max="+", count=batch)
            busy.update(text(f.get(b"task", b"")) for _, f in raw)
            if len(raw) < batch:
                break
            start = "(" + text(raw[-1][0])
    return busy


async def prune_done(
    log: EventLog, head: SnapshotHead, retired: Iterable[TaskView] = (), *, chunk: int = 1000
) -> int:
    """Forget the outcome of ended tasks whose every event was trimmed (those
    of the snapshot, and ``retired`` ones it left out); returns how many
    fields were removed."""
    keys = log.keys
    marks = await trim_marks(log)
    by_part = {p: marks[keys.events(p)] for p in keys.all_partitions() if keys.events(p) in marks}
    if not by_part:
        return 0
    busy = {p: await busy_tasks(log, p) for p in by_part}
    pending: dict[int, list[str]] = {p: [] for p in by_part}
    pruned = 0
    scripts = ViewScripts(log.redis)

    async def flush(p: int) -> int:
        ids, pending[p] = pending[p], []
        if not ids:
            return 0
        return await scripts.prune_done(
            done=keys.done(p), delayed=keys.delayed(p), cancels=keys.cancels(p), task_ids=ids
        )

    async def every_view() -> AsyncIterator[tuple[str, TaskView]]:
        async for views in snapshot_tasks(log, head, chunk=chunk):
            for item in views.items():
                yield item
        for view in retired:
            yield view.task_id, view

    async for task_id, view in every_view():
        p = keys.partition(task_id)
        mark = by_part.get(p)
        if (
            mark is not None
            and view.status in TERMINAL
            and view.last_event_id
            and id_lt(view.last_event_id, mark)
            and task_id not in busy[p]
        ):
            pending[p].append(task_id)
            if len(pending[p]) >= chunk:
                pruned += await flush(p)
    for p in by_part:
        pruned += await flush(p)
    return pruned
