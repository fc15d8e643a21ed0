"""The tables the migrations create are the tables the code declares
(``history/schema.py``), on both databases: Alembic's own comparison finds
no difference, so the two cannot drift apart. And migrating twice changes
nothing."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from history.database import Database, head_revision, migrate, schema_revision
from history.schema import METADATA, SCHEMA


def _declared(db: Database) -> sa.MetaData:
    if not db.sqlite:
        return METADATA
    plain = sa.MetaData()
    for table in METADATA.tables.values():
        table.to_metadata(plain, schema=None)
    return plain


def test_the_migrated_schema_is_the_declared_one(sql_db: Database) -> None:
    assert schema_revision(sql_db) is None
    assert migrate(sql_db) == (None, head_revision())
    assert migrate(sql_db) == (head_revision(), head_revision())
    with sql_db.engine.connect() as conn:
        opts = {} if sql_db.sqlite else {"include_schemas": True, "version_table_schema": SCHEMA}
        if not sql_db.sqlite:
            opts["include_name"] = lambda name, type_, _parent: (  # type: ignore[assignment]
                type_ != "schema" or name == SCHEMA
            )
        context = MigrationContext.configure(conn, opts=opts)
        diff = compare_metadata(context, _declared(sql_db))
    assert diff == []
