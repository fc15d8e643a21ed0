"""Reading and writing the SQL history's tables.

Every batch is one transaction: the event rows, the task and node rows they
change, and the tracking rows that say how far each stream has been applied.
The tracking rows are compare-and-set (``UPDATE … WHERE last_id = <what this
writer read>``), so a second SQL projector that raced this one makes the
transaction roll back instead of writing a row twice, and a kill at any
point leaves either the whole batch or none of it: the exactly-once pattern
of tracking records.

Writes are bulk. On PostgreSQL every row goes in by ``COPY``, one per table
and batch; a task that already has a row has it deleted first, in the same
transaction (readers see the old row or the new one, never none). Which
tasks are new the fold knows: it started their views from nothing, having
read the table. Row by row, as SQLAlchemy's executemany sends them through
psycopg, the server takes one statement per row, which cost more than all
the rest of a backfill together. The ``COPY`` runs on psycopg's own
connection, inside the same transaction; its errors are turned into
SQLAlchemy's, so they read like every other. On SQLite the rows go to
sqlite3's ``executemany`` (a loop in C over one prepared statement) as
tuples, every task row an upsert: through SQLAlchemy, each row's parameters
are handled in Python first, which cost as much as SQLite's own work. Node
rows, a handful a batch, are SQLAlchemy upserts on both.

These are blocking calls; the async SQL projector runs them in a thread.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from history.database import Database, SqlError
from history.rows import view_of_node, view_of_task
from history.schema import SCHEMA, node_events, nodes, task_events, tasks, tracking
from projections.views import NodeView, TaskView

__all__ = ["Batch", "HistoryStore", "TrackingConflict"]

CHUNK = 500  # ids per IN (...) list on SQLite (PostgreSQL takes one array)


class TrackingConflict(SqlError):
    """Another writer moved a stream's tracking row since this one read it."""


@dataclass
class Batch:
    """What one transaction writes: rows per table, and per stream the
    tracking move (the last id this writer read, ``None`` for a stream it
    has no row for, and the new last id with the number of entries).
    ``new_tasks``: the ids in ``tasks`` known to have no row yet, inserted
    without looking for one; any other task row replaces the task's row, if
    it has one."""

    task_events: list[dict[str, Any]] = field(default_factory=list)
    node_events: list[dict[str, Any]] = field(default_factory=list)
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    new_tasks: set[str] = field(default_factory=set)
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    moves: dict[str, tuple[str | None, str, int]] = field(default_factory=dict)

    @property
    def entries(self) -> int:
        return sum(n for _, _, n in self.moves.values())


class HistoryStore:
    """The tables of one database, as the SQL projector and the tools use them."""

    def __init__(self, db: Database) -> None:
        self.db = db
        dialect = sqlite if db.sqlite else postgresql
        self._node_upsert = _upsert(dialect, nodes, "node")
        ids = sa.bindparam("ids", type_=postgresql.ARRAY(sa.Text))
        self._task_ids = tasks.c.task_id == sa.any_(ids)  # PostgreSQL

    # -- reading ------------------------------------------------------------------

    def positions(self) -> dict[str, str]:
        """The last entry id applied, per stream."""
        with self.db.begin() as conn:
            rows = conn.execute(sa.select(tracking.c.stream, tracking.c.last_id))
            return {stream: last for stream, last in rows}

    def task_views(self, task_ids: Iterable[str]) -> dict[str, TaskView]:
        """The task views kept for these tasks (those that have a row)."""
        ids = list(task_ids)
        out: dict[str, TaskView] = {}
        if not ids:
            return out
        q = sa.select(tasks.c.task_id, tasks.c.view)
        with self.db.begin() as conn:
            if not self.db.sqlite:
                rows = conn.execute(q.where(self._task_ids), {"ids": ids})
                return {task_id: view_of_task(view) for task_id, view in rows}
            for i in range(0, len(ids), CHUNK):
                rows = conn.execute(q.where(tasks.c.task_id.in_(ids[i : i + CHUNK])))
                out.update((task_id, view_of_task(view)) for task_id, view in rows)
        return out

    def node_views(self, names: Iterable[str]) -> dict[str, NodeView]:
        wanted = list(names)
        if not wanted:
            return {}
        with self.db.begin() as conn:
            q = sa.select(nodes.c.node, nodes.c.view).where(nodes.c.node.in_(wanted))
            return {node: view_of_node(view) for node, view in conn.execute(q)}

    def counts(self) -> dict[str, int]:
        """Rows per table (for status lines and tests)."""
        with self.db.begin() as conn:
            return {
                t.name: conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
                for t in (tasks, task_events, node_events, nodes, tracking)
            }

    # -- writing ------------------------------------------------------------------

    def write(self, batch: Batch) -> None:
        """Write ``batch`` in one transaction (see the module docstring);
        :class:`TrackingConflict` if another writer got there first."""
        with self.db.begin() as conn:
            self._move_tracking(conn, batch.moves)
            if self.db.sqlite:
                _insert(conn, task_events, batch.task_events)
                _insert(conn, node_events, batch.node_events)
                _insert(conn, tasks, batch.tasks.values(), upsert_on="task_id")
            else:
                self._copy_rows(conn, batch)
            if batch.nodes:
                conn.execute(self._node_upsert, list(batch.nodes.values()))

    def _copy_rows(self, conn: sa.Connection, batch: Batch) -> None:
        """The event and task rows of ``batch`` on PostgreSQL (see the module
        docstring)."""
        known = [task_id for task_id in batch.tasks if task_id not in batch.new_tasks]
        if known:
            conn.execute(sa.delete(tasks).where(self._task_ids), {"ids": known})
        with _driver_errors(conn) as cursor:
            _copy(cursor, task_events, batch.task_events)
            _copy(cursor, node_events, batch.node_events)
            _copy(cursor, tasks, batch.tasks.values())

    def _move_tracking(
        self, conn: sa.Connection, moves: Mapping[str, tuple[str | None, str, int]]
    ) -> None:
        now = time.time()
        for stream, (before, after, n) in sorted(moves.items()):
            if before is None:
                try:
                    with conn.begin_nested():
                        conn.execute(
                            sa.insert(tracking).values(
                                stream=stream, last_id=after, applied=n, updated_at=now
                            )
                        )
                except sa.exc.IntegrityError:
                    raise _conflict(stream) from None
                continue
            done = conn.execute(
                sa.update(tracking)
                .where(tracking.c.stream == stream, tracking.c.last_id == before)
                .values(last_id=after, applied=tracking.c.applied + n, updated_at=now)
            )
            if done.rowcount != 1:
                raise _conflict(stream)

    def clear(self) -> None:
        """Empty every table (``eventcore sql rebuild``), in one transaction."""
        with self.db.begin() as conn:
            for table in (tracking, task_events, node_events, tasks, nodes):
                conn.execute(sa.delete(table))


def _conflict(stream: str) -> TrackingConflict:
    return TrackingConflict(
        f"another writer applied entries of {stream} first (is a second "
        "`eventcore sql` running on the same database?)"
    )


@contextmanager
def _driver_errors(conn: sa.Connection) -> Iterator[psycopg.Cursor[Any]]:
    """A cursor of psycopg's connection under ``conn``, in its transaction;
    psycopg's errors come out as SQLAlchemy's, a connection they broke is
    given up (as SQLAlchemy does with its own statements)."""
    driver = conn.connection.driver_connection
    assert isinstance(driver, psycopg.Connection)
    try:
        with driver.cursor() as cursor:
            yield cursor
    except psycopg.Error as error:
        if driver.broken or driver.closed:
            conn.invalidate()
        raise sa.exc.DBAPIError.instance("COPY", None, error, psycopg.Error) from error


def _copy(cursor: psycopg.Cursor[Any], table: sa.Table, rows: Collection[dict[str, Any]]) -> None:
    """``rows`` (dicts with every column) into ``table`` by ``COPY``."""
    if not rows:
        return
    names = [c.name for c in table.columns]
    pick = itemgetter(*names)
    with cursor.copy(f"COPY {SCHEMA}.{table.name} ({', '.join(names)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(pick(row))


def _insert(
    conn: sa.Connection,
    table: sa.Table,
    rows: Collection[dict[str, Any]],
    *,
    upsert_on: str | None = None,
) -> None:
    """``rows`` (dicts with every column) into ``table`` on SQLite, by one
    ``executemany`` of the driver (see the module docstring); an upsert on
    ``upsert_on`` if given."""
    if not rows:
        return
    names = [c.name for c in table.columns]
    columns = ", ".join(f'"{name}"' for name in names)
    sql = f'INSERT INTO "{table.name}" ({columns}) VALUES ({", ".join("?" * len(names))})'
    if upsert_on is not None:
        sql += f' ON CONFLICT ("{upsert_on}") DO UPDATE SET ' + ", ".join(
            f'"{n}" = excluded."{n}"' for n in names if n != upsert_on
        )
    pick = itemgetter(*names)
    conn.exec_driver_sql(sql, [pick(row) for row in rows])


def _upsert(dialect: Any, table: sa.Table, key: str) -> Any:
    stmt = dialect.insert(table)
    return stmt.on_conflict_do_update(
        index_elements=[key],
        set_={c.name: stmt.excluded[c.name] for c in table.columns if c.name != key},
    )
