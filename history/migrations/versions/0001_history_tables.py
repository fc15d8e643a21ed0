"""The first tables: tasks, task_events, node_events, nodes, tracking.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
Time = sa.Float(precision=53)


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    schema = None if sqlite else "eventcore"
    if not sqlite and not sa.inspect(op.get_bind()).has_schema("eventcore"):
        # Not IF NOT EXISTS: that needs the right to create in the database
        # even when the schema is there (see history.database.migrate).
        op.execute("CREATE SCHEMA eventcore")
    op.create_table(
        "tasks",
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
        schema=schema,
    )
    op.create_index("tasks_submitted", "tasks", ["submitted_at", "task_id"], schema=schema)
    op.create_index("tasks_finished", "tasks", ["finished_at"], schema=schema)
    op.create_index("tasks_status", "tasks", ["status", "submitted_at"], schema=schema)
    op.create_index("tasks_tenant", "tasks", ["tenant", "submitted_at"], schema=schema)
    op.create_table(
        "task_events",
        sa.Column("stream", sa.Text, primary_key=True),
        sa.Column("entry_id", sa.String(48), primary_key=True),
        sa.Column("task_id", sa.Text, nullable=False),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("at", Time, nullable=False),
        sa.Column("node", sa.Text),
        sa.Column("event", Json, nullable=False),
        schema=schema,
    )
    op.create_index("task_events_task", "task_events", ["task_id", "at"], schema=schema)
    op.create_index("task_events_at", "task_events", ["at"], schema=schema)
    op.create_table(
        "node_events",
        sa.Column("stream", sa.Text, primary_key=True),
        sa.Column("entry_id", sa.String(48), primary_key=True),
        sa.Column("node", sa.Text, nullable=False),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("at", Time, nullable=False),
        sa.Column("event", Json, nullable=False),
        schema=schema,
    )
    op.create_index("node_events_node", "node_events", ["node", "at"], schema=schema)
    op.create_table(
        "nodes",
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
        schema=schema,
    )
    op.create_table(
        "tracking",
        sa.Column("stream", sa.Text, primary_key=True),
        sa.Column("last_id", sa.String(48), nullable=False),
        sa.Column("applied", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("updated_at", Time, nullable=False),
        schema=schema,
    )


def downgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    schema = None if sqlite else "eventcore"
    for table in ("tracking", "nodes", "node_events", "task_events", "tasks"):
        op.drop_table(table, schema=schema)
