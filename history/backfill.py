"""Filling a new, empty SQL history: from the log, from the latest snapshot
when the log was trimmed, or from an export file.

A database with no tracking rows over a log never trimmed is filled by the
SQL projector itself, reading every stream from its first entry. Over a
trimmed log that would silently miss the trimmed tasks, so it starts from
the latest snapshot instead (:func:`seed_from_snapshot`): every task view
and node in it becomes a row, and the tracking rows are set to the
snapshot's watermark, the log after it following as usual. The events
before the snapshot have no ``task_events`` rows then; an export taken
before the trim has them (:func:`backfill_export`).

Seeding writes the task rows in chunks, each an idempotent upsert, and the
tracking rows last: a seed killed halfway leaves no tracking rows, so the
next start seeds again over the same rows.

:func:`gaps` finds streams trimmed past what the SQL history has read (a
database restored from an old backup, or filled from an export that ends
before the trim): entries are missing there, and ``eventcore sql`` refuses
to go on until an export fills them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

import msgspec

from eventcore.log import groups
from history.database import SqlError
from history.follower import GROUP, START, SqlProjector
from history.rows import node_row, task_row
from history.store import Batch
from projections.export import export_entries
from projections.points import id_lt
from projections.snapshot import SnapshotHead, latest_head, snapshot_tasks
from projections.trim import trim_marks
from projections.views import NodeView

__all__ = ["backfill_export", "gaps", "prepare", "seed_from_snapshot"]

Progress = Callable[[int], None]


async def gaps(projector: SqlProjector) -> dict[str, tuple[str, str]]:
    """Streams trimmed past the SQL history's position: ``{stream: (position,
    lowest id the log keeps)}``."""
    marks = await trim_marks(projector.log)
    return {
        stream: (projector.positions.get(stream, START), mark)
        for stream, mark in marks.items()
        if id_lt(projector.positions.get(stream, START), mark)
    }


def _node_part(view: NodeView, node_stream: str) -> NodeView:
    """A snapshot's node view as the node stream alone tells it."""
    return msgspec.structs.replace(
        view,
        running=(),
        processed=0,
        failed=0,
        last_ids={s: i for s, i in view.last_ids.items() if s == node_stream},
    )


async def seed_from_snapshot(
    projector: SqlProjector,
    head: SnapshotHead,
    *,
    chunk: int = 5_000,
    progress: Progress | None = None,
) -> int:
    """Write the snapshot's tasks and nodes and track its watermark (see the
    module docstring); the number of tasks written."""
    log = projector.log
    # The group first: from now on a trim keeps everything after the watermark.
    for stream in projector.streams:
        start = head.watermark.get(stream, "0")
        if not await groups.ensure_group(log.redis, stream, GROUP, start):
            await log.redis.xgroup_setid(stream, GROUP, start)
    for stream, mark in (await trim_marks(log)).items():
        if id_lt(head.watermark.get(stream, START), mark):
            raise SqlError(
                f"{stream} was trimmed up to {mark}, past snapshot {head.id}'s watermark: "
                "a newer snapshot was taken meanwhile; run `eventcore sql` again"
            )
    written = 0
    async for views in snapshot_tasks(log, head, chunk=chunk):
        batch = Batch(tasks={t: task_row(v) for t, v in views.items()})
        await _write(projector, batch)
        written += len(views)
        if progress is not None:
            progress(written)
    nodes = head.views().nodes
    last = Batch(
        nodes={
            n: node_row(_node_part(v, projector.node_stream))
            for n, v in nodes.items()
            if projector.node_stream in v.last_ids
        },
        moves={
            s: (None, i, 0)
            for s, i in head.watermark.items()
            if s in projector.streams and s not in projector.tracked
        },
    )
    await _write(projector, last)
    await projector.reload()
    return written


async def _write(projector: SqlProjector, batch: Batch) -> None:
    await asyncio.to_thread(projector.store.write, batch)


async def backfill_export(
    projector: SqlProjector, lines: Iterable[bytes], *, progress: Progress | None = None
) -> int:
    """Fold the log entries of an export into the tables, a batch a
    transaction; entries at or below the positions already written are
    skipped, so an export can be given again, or overlap the log. Returns
    the entries applied."""
    before = projector.applied
    pending: list[tuple[str, str, object]] = []
    for item in export_entries(projector.log, lines):
        pending.append(item)
        if len(pending) >= projector.batch:
            await projector.apply(pending)
            pending = []
            if progress is not None:
                progress(projector.applied - before)
    if pending:
        await projector.apply(pending)
    return projector.applied - before


async def prepare(projector: SqlProjector, *, say: Callable[[str], None]) -> None:
    """Before following: seed a new database from the snapshot over a
    trimmed log, then refuse to go on over a gap."""
    await projector.setup()
    if not projector.tracked and await trim_marks(projector.log):
        head = await latest_head(projector.log)
        if head is not None:
            n = await seed_from_snapshot(projector, head)
            say(f"sql: the log was trimmed; {n} tasks taken from snapshot {head.id}")
    missing = await gaps(projector)
    if missing:
        lines = "; ".join(
            f"{s} is at {pos} but the log keeps only from {mark}"
            for s, (pos, mark) in missing.items()
        )
        raise SqlError(
            f"the log was trimmed past what the SQL history holds ({lines}): fill the gap "
            "from an export taken before the trim (`eventcore sql backfill FILE`)"
        )
