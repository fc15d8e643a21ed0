"""The tables of the SQL history, as SQLAlchemy Core tables.

They are declared once, in schema ``eventcore``. On PostgreSQL they live in
that schema; on SQLite, which has no schemas, the same tables are unqualified
(:data:`SQLITE_TRANSLATE` maps the schema away on every connection).

Times are seconds since the epoch (UTC) as double precision, as in the
events and views, so a query reads the same on both databases; in
PostgreSQL ``to_timestamp(at)`` gives a ``timestamptz``. JSON columns are
``jsonb`` on PostgreSQL and JSON text on SQLite.

- ``tasks``: one row per task, its current state as the task view has it
  (``view`` is the whole view, which the SQL projector folds on from);
- ``task_events``: one row per entry of a partition's task log;
- ``node_events``: one row per entry of the node stream;
- ``nodes``: one row per node, its last known state from the node stream;
- ``tracking``: the last entry applied per stream, written in the same
  transaction as the rows it accounts for.

A change to a table is a new migration in ``history/migrations/versions``.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

__all__ = [
    "METADATA",
    "SCHEMA",
    "SQLITE_TRANSLATE",
    "node_events",
    "nodes",
    "task_events",
    "tasks",
    "tracking",
]

SCHEMA = "eventcore"
SQLITE_TRANSLATE = {SCHEMA: None}

METADATA = sa.MetaData(schema=SCHEMA)

Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
Time = sa.Float(precision=53)

tasks = sa.Table(
    "tasks",
    METADATA,
    sa.Column("task_id", sa.Text, primary_key=True),
    sa.Column("tenant", sa.Text, nullable=False, server_default=""),
    sa.Column("kind", sa.Text, nullable=False, server_default=""),
    sa.Column("queue", sa.Text, nullable=False, server_default=""),
    sa.Column("priority", sa.Text),
    sa.Column("model", sa.Text),
    sa.Column("status", sa.Text),
    sa.Column("node", sa.Text),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("deliveries", sa.Integer, nullable=False, server_default="0"),
    sa.Column("submitted_at", Time),
    sa.Column("started_at", Time),
    sa.Column("finished_at", Time),
    sa.Column("duration_s", Time),
    sa.Column("error", sa.Text),
    sa.Column("result_ref", sa.Text),
    sa.Column("params", Json),
    sa.Column("last_entry_id", sa.String(48), nullable=False),
    sa.Column("view", Json, nullable=False),
    sa.Index("tasks_submitted", "submitted_at", "task_id"),
    sa.Index("tasks_finished", "finished_at"),
    sa.Index("tasks_status", "status", "submitted_at"),
    sa.Index("tasks_tenant", "tenant", "submitted_at"),
)

task_events = sa.Table(
    "task_events",
    METADATA,
    sa.Column("stream", sa.Text, primary_key=True),
    sa.Column("entry_id", sa.String(48), primary_key=True),
    sa.Column("task_id", sa.Text, nullable=False),
    sa.Column("type", sa.Text, nullable=False),
    sa.Column("at", Time, nullable=False),
    sa.Column("node", sa.Text),
    sa.Column("event", Json, nullable=False),
    sa.Index("task_events_task", "task_id", "at"),
    sa.Index("task_events_at", "at"),
)

node_events = sa.Table(
    "node_events",
    METADATA,
    sa.Column("stream", sa.Text, primary_key=True),
    sa.Column("entry_id", sa.String(48), primary_key=True),
    sa.Column("node", sa.Text, nullable=False),
    sa.Column("type", sa.Text, nullable=False),
    sa.Column("at", Time, nullable=False),
    sa.Column("event", Json, nullable=False),
    sa.Index("node_events_node", "node", "at"),
)

nodes = sa.Table(
    "nodes",
    METADATA,
    sa.Column("node", sa.Text, primary_key=True),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("state_since", Time),
    sa.Column("host", sa.Text, nullable=False, server_default=""),
    sa.Column("pid", sa.Integer),
    sa.Column("version", sa.Text, nullable=False, server_default=""),
    sa.Column("queues", Json, nullable=False),
    sa.Column("concurrency", sa.Integer, nullable=False, server_default="0"),
    sa.Column("started_at", Time),
    sa.Column("last_heartbeat", Time),
    sa.Column("last_entry_id", sa.String(48), nullable=False),
    sa.Column("view", Json, nullable=False),
)

tracking = sa.Table(
    "tracking",
    METADATA,
    sa.Column("stream", sa.Text, primary_key=True),
    sa.Column("last_id", sa.String(48), nullable=False),
    sa.Column("applied", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("updated_at", Time, nullable=False),
)
