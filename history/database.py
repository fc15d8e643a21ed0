"""Opening the SQL history database: URLs, engines, migrations and the errors
a person can act on.

A URL is ``postgresql://…`` (driven by psycopg 3), ``sqlite:///path`` (the
standard library's sqlite3), or a bare file path, taken as SQLite. Every
failure to reach or set up the database is a :class:`SqlError`, one line
that names the database (its password hidden) and what went wrong.

Migrations are Alembic's, in ``history/migrations``; they run in one
transaction (PostgreSQL and SQLite both have transactional DDL), so a
failure leaves the schema as it was. A database whose schema is newer than
this eventcore knows is refused, never downgraded.

SQLite: the driver's own transaction handling is turned off and every
transaction starts with an explicit ``BEGIN`` (``BEGIN IMMEDIATE`` for the
writer, so two writers queue instead of failing halfway), WAL journal, and a
busy timeout, so the web app reads while the projector writes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event, exc

from eventcore.config import Settings
from eventcore.errors import EventcoreError
from history.schema import SCHEMA, SQLITE_TRANSLATE

__all__ = [
    "DEFAULT_FILE",
    "Database",
    "SqlError",
    "SqlUnavailable",
    "database_url",
    "migrate",
    "open_database",
    "schema_revision",
]

DEFAULT_FILE = "history.sqlite3"
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_MS = 30_000
CONNECT_TIMEOUT_S = 5
MIGRATION_LOCK = 0x65_63_68_69_73_74  # "echist": the advisory lock migrations take


class SqlError(EventcoreError):
    """The SQL database cannot be used as configured; the message says why."""


class SqlUnavailable(SqlError):
    """The SQL database does not answer (down, restarting, unreachable):
    worth waiting for, unlike a wrong URL or a missing permission."""


def database_url(settings: Settings, url: str | None = None) -> str:
    """The URL to use: ``url`` if given, else ``sql.url``, else the SQLite
    file in the data directory."""
    chosen = url or settings.sql.url
    if chosen:
        return chosen
    return str(Path(settings.redis.data_dir).resolve() / DEFAULT_FILE)


def _sa_url(url: str) -> sa.URL:
    """``url`` as SQLAlchemy's URL with eventcore's driver for its database."""
    text = url.strip()
    if "://" not in text:
        if not text:
            raise SqlError("sql.url is empty: give postgresql://… or sqlite:///path")
        return sa.URL.create("sqlite+pysqlite", database=str(Path(text).resolve()))
    try:
        parsed = sa.make_url(text)
    except (exc.ArgumentError, ValueError):  # ValueError: a port that is no number
        raise SqlError(f"sql.url {_hide(text)!r} is not a database URL") from None
    backend = parsed.get_backend_name()
    if backend in ("postgresql", "postgres"):
        if parsed.port is not None and not 0 < parsed.port < 65536:
            # libpq would refuse one above, and take 0 for its default, 5432.
            raise SqlError(f"sql.url {_hide(text)!r}: port {parsed.port} is not a port (1-65535)")
        return parsed.set(drivername="postgresql+psycopg")
    if backend == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise SqlError(
                f"sql.url {_hide(text)!r} names no file: a history kept in memory "
                "is lost when the process ends; give sqlite:///path"
            )
        return parsed.set(drivername="sqlite+pysqlite")
    raise SqlError(
        f"sql.url {_hide(text)!r}: {parsed.drivername!r} is not supported; "
        "give postgresql://user:password@host:port/db or sqlite:///path"
    )


def _hide(text: str) -> str:
    try:
        return sa.make_url(text).render_as_string(hide_password=True)
    except (exc.ArgumentError, ValueError):
        # Unparsed: hide all from the colon after the user to the last @ (too much
        # rather than a piece of a password with an @ in it).
        return re.sub(r"(://[^:/@]*:).*@", r"\1***@", text)


def _json(value: Any) -> str:
    """JSON for a JSON column: strings are taken as JSON already encoded."""
    return value if isinstance(value, str) else msgspec.json.encode(value).decode()


class Database:
    """One SQL history database: its engine, its kind, and how to name it."""

    def __init__(self, url: str, *, writer: bool = False, pool_size: int = 5) -> None:
        self.sa_url = _sa_url(url)
        self.sqlite = self.sa_url.get_backend_name() == "sqlite"
        # How messages name it: the file, or the URL without its password.
        self.name = (
            str(self.sa_url.database)
            if self.sqlite
            else self.sa_url.set(drivername="postgresql").render_as_string(hide_password=True)
        )
        if self.sqlite:
            path = Path(self.sa_url.database or "")
            if not path.parent.is_dir():
                raise SqlError(f"sql.url {self.name}: the directory {path.parent} does not exist")
            self.engine = sa.create_engine(
                self.sa_url,
                json_serializer=_json,
                json_deserializer=msgspec.json.decode,
                connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_MS / 1000},
                pool_size=pool_size,
                max_overflow=pool_size,
                poolclass=sa.QueuePool,
            ).execution_options(schema_translate_map=SQLITE_TRANSLATE)
            _sqlite_transactions(self.engine, immediate=writer)
        else:
            self.engine = sa.create_engine(
                self.sa_url,
                json_serializer=_json,
                json_deserializer=msgspec.json.decode,
                connect_args={"connect_timeout": CONNECT_TIMEOUT_S},
                pool_size=pool_size,
                max_overflow=pool_size,
                pool_pre_ping=True,
            )

    @property
    def kind(self) -> str:
        return "SQLite" if self.sqlite else "PostgreSQL"

    @contextmanager
    def begin(self) -> Iterator[sa.Connection]:
        """A connection in a transaction, committed at the end of the block;
        database errors come out as :class:`SqlError`."""
        with self.errors():
            with self.engine.begin() as conn:
                yield conn

    @contextmanager
    def errors(self) -> Iterator[None]:
        """Turn the driver's errors into one line that names this database."""
        try:
            yield
        except exc.DBAPIError as error:
            raise self.explain(error) from error

    def explain(self, error: exc.DBAPIError) -> SqlError:
        detail = _first_line(error.orig) if error.orig is not None else str(error)
        operational = isinstance(error, (exc.OperationalError, exc.InterfaceError))
        if operational and _transient(detail, sqlite=self.sqlite):
            return SqlUnavailable(f"the SQL database {self.name} does not answer: {detail}")
        return SqlError(f"the SQL database {self.name} refused: {detail}")

    def dispose(self) -> None:
        self.engine.dispose()


def _first_line(orig: BaseException) -> str:
    lines = [line.strip() for line in str(orig).splitlines() if line.strip()]
    return lines[0] if lines else type(orig).__name__


def _transient(detail: str, *, sqlite: bool) -> bool:
    """Whether an operational error is one that waiting may cure."""
    text = detail.lower()
    if sqlite:
        # sqlite3 raises OperationalError for nearly everything (a table that
        # exists, a file it cannot open): only a lock or the disk passes.
        return any(words in text for words in _SQLITE_TRANSIENT)
    return not any(words in text for words in _POSTGRES_REFUSALS)


_SQLITE_TRANSIENT = ("is locked", "disk i/o error", "database or disk is full")
_POSTGRES_REFUSALS = (
    "password authentication failed",
    "does not exist",
    "permission denied",
    "no pg_hba.conf entry",
    "invalid",  # libpq on a connection option: "invalid sslmode value", ...
)


def _sqlite_transactions(engine: sa.Engine, *, immediate: bool) -> None:
    """Let SQLAlchemy, not the sqlite3 module, begin SQLite transactions, so
    DDL is transactional and the writer takes its lock when it begins."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def open_database(url: str, *, writer: bool = False) -> Database:
    """A :class:`Database` for ``url``; a wrong URL raises :class:`SqlError`."""
    return Database(url, writer=writer)


# -- migrations ---------------------------------------------------------------


def _alembic_config(db: Database) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["sqlite"] = db.sqlite
    return cfg


def _version_options(db: Database) -> dict[str, Any]:
    return {} if db.sqlite else {"version_table_schema": SCHEMA}


def schema_revision(db: Database) -> str | None:
    """The migration the database is at (``None``: no eventcore tables yet)."""
    with db.errors(), db.engine.connect() as conn:
        return MigrationContext.configure(conn, opts=_version_options(db)).get_current_revision()


def head_revision() -> str:
    script = ScriptDirectory(str(MIGRATIONS))
    head = script.get_current_head()
    assert head is not None
    return head


def known_revisions() -> set[str]:
    return {rev.revision for rev in ScriptDirectory(str(MIGRATIONS)).walk_revisions()}


def check_schema(db: Database) -> None:
    """Raise :class:`SqlError` unless the database is at this eventcore's
    schema (readers never migrate; the SQL projector does)."""
    current = schema_revision(db)
    head = head_revision()
    if current == head:
        return
    if current is None:
        raise SqlError(
            f"the SQL database {db.name} has no eventcore tables yet: "
            "`eventcore sql` creates them (or `eventcore sql migrate`)"
        )
    if current not in known_revisions():
        raise _newer(db, current, head)
    raise SqlError(
        f"the SQL database {db.name} is at schema {current}, this eventcore needs {head}: "
        "run `eventcore sql migrate`"
    )


def _newer(db: Database, current: str, head: str) -> SqlError:
    return SqlError(
        f"the SQL database {db.name} has schema version {current}, newer than this "
        f"eventcore knows (its newest is {head}): upgrade eventcore; nothing was changed"
    )


def migrate(db: Database) -> tuple[str | None, str]:
    """Bring the schema to this eventcore's newest, in one transaction;
    returns the revisions before and after. Refuses a newer schema."""
    before = schema_revision(db)
    head = head_revision()
    if before is not None and before not in known_revisions():
        raise _newer(db, before, head)
    if before == head:
        return before, head
    cfg = _alembic_config(db)
    with db.begin() as conn:
        if not db.sqlite:
            # Two SQL projectors started together on a new database would both
            # create the schema, and the second fail on it: migrations queue
            # here instead (SQLite's writers queue at BEGIN IMMEDIATE), and
            # the second finds the work done.
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
        before = MigrationContext.configure(conn, opts=_version_options(db)).get_current_revision()
        if before == head:
            return before, head
        if not db.sqlite and not sa.inspect(conn).has_schema(SCHEMA):
            # Alembic's version table lives in the schema, so it comes first.
            # Only when missing: even with IF NOT EXISTS, CREATE SCHEMA needs
            # the right to create in the database, and a role may well have
            # rights on an existing schema alone.
            conn.exec_driver_sql(f"CREATE SCHEMA {SCHEMA}")
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    return before, head
