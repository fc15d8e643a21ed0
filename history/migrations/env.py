"""Alembic's environment for the SQL history: migrations run on the
connection :func:`history.database.migrate` hands over, inside its
transaction; there is no ``alembic.ini`` and no offline mode."""

from __future__ import annotations

from alembic import context

from history.schema import METADATA, SCHEMA

config = context.config
connection = config.attributes["connection"]
sqlite = config.attributes["sqlite"]

context.configure(
    connection=connection,
    target_metadata=METADATA,
    version_table_schema=None if sqlite else SCHEMA,
    include_schemas=not sqlite,
    transactional_ddl=True,
)
context.run_migrations()
