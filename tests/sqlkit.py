"""Helpers for the SQL history tests: run the SQL projector until it has
everything, and read the tables back as rows to compare."""

from __future__ import annotations

from typing import Any

import msgspec
import sqlalchemy as sa

from eventcore.log import EventLog
from history.database import Database
from history.follower import SqlProjector
from history.rows import node_row, task_row
from history.schema import node_events, task_events, tracking
from projections.replay import Views


async def drain(projector: SqlProjector, *, limit: int = 10_000) -> int:
    """Step until a step reads nothing; the entries applied."""
    before = projector.applied
    for _ in range(limit):
        if not await projector.step(None):
            return projector.applied - before
    raise AssertionError("the SQL projector never caught up")


JSON = ("params", "view", "queues", "event")


def table(db: Database, t: sa.Table, key: str) -> dict[Any, dict[str, Any]]:
    """Every row of ``t`` by ``key``, JSON columns parsed."""
    with db.begin() as conn:
        rows = [dict(r._mapping) for r in conn.execute(sa.select(t))]
    return {r[key]: _parsed(r) for r in rows}


def _parsed(row: dict[str, Any]) -> dict[str, Any]:
    return {
        k: msgspec.json.decode(v) if k in JSON and isinstance(v, str) else v for k, v in row.items()
    }


def expected_tasks(views: Views) -> dict[str, dict[str, Any]]:
    return {t: _parsed(task_row(v)) for t, v in views.tasks.items()}


def expected_nodes(views: Views) -> dict[str, dict[str, Any]]:
    """Node rows as folded from the node stream alone (what ``nodes`` holds)."""
    return {n: _parsed(node_row(v)) for n, v in views.nodes.items()}


def event_keys(db: Database) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    with db.begin() as conn:
        te = [
            tuple(r) for r in conn.execute(sa.select(task_events.c.stream, task_events.c.entry_id))
        ]
        ne = [
            tuple(r) for r in conn.execute(sa.select(node_events.c.stream, node_events.c.entry_id))
        ]
    return te, ne  # type: ignore[return-value]


def positions(db: Database) -> dict[str, str]:
    with db.begin() as conn:
        return dict(conn.execute(sa.select(tracking.c.stream, tracking.c.last_id)).all())  # type: ignore[arg-type]


async def log_entries(log: EventLog) -> list[tuple[str, str]]:
    """Every (stream, id) of the task logs and the node stream."""
    out = []
    for stream in [*(log.keys.events(p) for p in log.keys.all_partitions()), log.keys.nodes()]:
        out += [(stream, e.id) for e in await log.read(stream)]
    return out
