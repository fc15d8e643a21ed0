"""``eventcore sql verify``: the SQL history against a fold of the log.

The log is folded (from the latest snapshot when there is one, as ``replay
verify`` does) up to exactly the positions in the tracking rows, read in the
same transaction as nothing else is written then, so a running SQL projector
makes no false differences. Then:

- every task the fold has must have a row equal to its view, column by
  column and the whole view;
- every log entry still in Redis up to the positions must have exactly one
  event row, and no event row in that range may be one the log lacks;
- every node the node stream names must have a row equal to its fold.

Rows of tasks the log no longer has (trimmed, and older than the snapshot)
are history, not differences: the SQL store outlives the log.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import msgspec
import sqlalchemy as sa

from eventcore.codec import text
from eventcore.ids import stream_id_key
from history.follower import SqlProjector
from history.rows import task_row, view_of_node, view_of_task
from history.schema import node_events, nodes, task_events, tasks
from projections.nodes import fold_node
from projections.points import log_streams
from projections.tools import expected_views, log_after
from projections.trim import trim_marks
from projections.views import NodeView

__all__ = ["verify_history"]

LIMIT = 20  # differences listed per kind
_SCALARS = [c.name for c in tasks.columns if c.name not in ("view", "params")]


async def verify_history(
    projector: SqlProjector, *, progress: Callable[[int], None] | None = None
) -> list[str]:
    """The differences between the tables and the log (empty: none)."""
    await projector.setup()
    log = projector.log
    upto = dict(projector.positions)
    tracked = {s: i for s, i in upto.items() if s in projector.tracked}
    expected = await expected_views(log, upto=tracked, progress=progress)
    problems: list[str] = []
    rows = await asyncio.to_thread(_task_rows, projector)
    bad = 0
    for task_id, view in sorted(expected.tasks.items()):
        got = rows.get(task_id)
        if got is None:
            problems.append(f"task {task_id}: no row")
            bad += 1
        elif (why := _task_difference(got, view)) is not None:
            problems.append(f"task {task_id}: {why}")
            bad += 1
        if bad >= LIMIT:
            problems.append("… (more tasks differ)")
            break
    if not await trim_marks(log) and await log.redis.get(log.keys.snapshot_pointer()) is None:
        extra = sorted(set(rows) - set(expected.tasks))
        problems += [f"task {t}: a row, but no such task in the log" for t in extra[:LIMIT]]
    problems += await _event_problems(projector, tracked)
    problems += await _node_problems(projector, tracked)
    return problems


def _task_rows(projector: SqlProjector) -> dict[str, dict[str, Any]]:
    with projector.db.begin() as conn:
        return {r.task_id: dict(r._mapping) for r in conn.execute(sa.select(tasks))}


def _task_difference(row: dict[str, Any], view: Any) -> str | None:
    want = task_row(view)
    for name in _SCALARS:
        if row[name] != want[name]:
            return f"{name} is {row[name]!r}, the log says {want[name]!r}"
    if view_of_task(row["view"]) != view:
        return "its view differs from the fold of the log"
    return None


async def _event_problems(projector: SqlProjector, tracked: dict[str, str]) -> list[str]:
    log = projector.log
    marks = await trim_marks(log)
    problems: list[str] = []
    for stream in log_streams(log.keys):
        last = tracked.get(stream)
        if last is None:
            continue
        low = marks.get(stream)
        in_log = await _log_ids(log.redis, stream, low or "-", last)
        table = node_events if stream == projector.node_stream else task_events
        in_sql = await asyncio.to_thread(_event_ids, projector, table, stream)
        if low is not None:
            in_sql = {i for i in in_sql if stream_id_key(i) >= stream_id_key(low)}
        in_sql = {i for i in in_sql if stream_id_key(i) <= stream_id_key(last)}
        missing = sorted(in_log - in_sql, key=stream_id_key)
        extra = sorted(in_sql - in_log, key=stream_id_key)
        problems += [f"{stream} {i}: no event row" for i in missing[:LIMIT]]
        problems += [f"{stream} {i}: an event row the log does not have" for i in extra[:LIMIT]]
    return problems


def _event_ids(projector: SqlProjector, table: sa.Table, stream: str) -> set[str]:
    with projector.db.begin() as conn:
        return set(
            conn.execute(sa.select(table.c.entry_id).where(table.c.stream == stream)).scalars()
        )


async def _node_problems(projector: SqlProjector, tracked: dict[str, str]) -> list[str]:
    log = projector.log
    stream = projector.node_stream
    last = tracked.get(stream)
    if last is None or stream in await trim_marks(log):
        return []
    folded: dict[str, NodeView] = {}
    for entry in await log_after(log, {}, upto={stream: last}):
        folded[entry.event.node] = fold_node(
            folded.get(entry.event.node), stream, entry.id, entry.event
        )
    with projector.db.begin() as conn:
        got = {n: view_of_node(v) for n, v in conn.execute(sa.select(nodes.c.node, nodes.c.view))}
    problems = []
    for name, view in sorted(folded.items()):
        if name not in got:
            problems.append(f"node {name}: no row")
        elif msgspec.msgpack.encode(got[name]) != msgspec.msgpack.encode(view):
            problems.append(f"node {name}: its row differs from the fold of the node stream")
    return problems


async def _log_ids(redis: Any, stream: str, start: str, end: str, batch: int = 10_000) -> set[str]:
    """The ids of a stream's entries from ``start`` to ``end`` (inclusive)."""
    out: set[str] = set()
    while True:
        raw = await redis.xrange(stream, min=start, max=end, count=batch)
        out.update(text(k) for k, _ in raw)
        if len(raw) < batch:
            return out
        start = "(" + text(raw[-1][0])
