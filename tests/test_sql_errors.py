"""A SQL history database that cannot be used, and bad query values, through
the real command line: each is one line (``eventcore: error: …``) that says
what is wrong, a non-zero exit, and never a traceback. A database that does
not answer fails ``sql migrate`` and ``history`` at once, while ``eventcore
sql`` (the SQL projector, a long-running role) waits for it, says so once,
and carries on when it answers. A schema newer than this eventcore is
refused with nothing changed, and a migration that fails midway leaves no
table and no version behind."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from eventcore.server.postgres import PostgresConfig, PostgresProcess
from eventcore.server.process import free_port
from history.database import Database, head_revision, migrate, open_database, schema_revision
from history.schema import SCHEMA
from tests.replaykit import cli

Result = subprocess.CompletedProcess[str]


def one_line(res: Result) -> str:
    """The one error line of a failed command (and that it failed so)."""
    assert res.returncode != 0, res.stdout
    assert "Traceback" not in res.stdout + res.stderr, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("eventcore: error: "), lines[0]
    return lines[0]


def migrate_cli(url: str, **kw: object) -> Result:
    return cli("sql", "migrate", "--url", url, **kw)  # type: ignore[arg-type]


def tasks_cli(url: str, *more: str, **kw: object) -> Result:
    return cli("history", "tasks", "--url", url, *more, **kw)  # type: ignore[arg-type]


# -- URLs ----------------------------------------------------------------------------------


def test_an_unsupported_database_is_named() -> None:
    line = one_line(migrate_cli("mysql://x"))
    assert "'mysql' is not supported" in line
    assert "postgresql://" in line and "sqlite:///" in line


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("postgresql://u@h:notaport/db", "is not a database URL"),
        ("postgresql://u:secret@h:notaport/db", "is not a database URL"),
        ("postgresql://u@[::1/db", "is not a database URL"),
        ("postgresql://u:secret@127.0.0.1:99999999/db", "port 99999999 is not a port"),
        ("postgresql://u:secret@127.0.0.1:0/db", "port 0 is not a port"),
        ("://x", "is not a database URL"),
        ("sqlite://", "names no file"),
        ("sqlite:///:memory:", "names no file"),
        ("   ", "is empty"),
    ],
)
def test_a_malformed_url_is_one_line(url: str, says: str) -> None:
    for res in (migrate_cli(url), tasks_cli(url)):
        line = one_line(res)
        assert says in line
        assert "secret" not in line  # a password is never shown


def test_a_url_option_libpq_rejects_is_a_refusal(redis_url: str, namespace: str) -> None:
    """Not "does not answer": the SQL projector would wait for it forever."""
    url = f"postgresql://u@127.0.0.1:{free_port()}/db?sslmode=bogus"
    env = {"REDIS_URL": redis_url, "EVENTCORE_NAMESPACE": namespace}
    for res in (migrate_cli(url), tasks_cli(url), cli("sql", "--url", url, env=env)):
        line = one_line(res)
        assert "refused" in line and 'invalid sslmode value: "bogus"' in line


def test_a_sqlite_file_in_a_missing_directory(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such"
    for res in (migrate_cli(f"sqlite:///{missing}/h.sqlite3"), tasks_cli(str(missing / "h.db"))):
        line = one_line(res)
        assert f"the directory {missing} does not exist" in line
    assert not (tmp_path / "no").exists()


# -- PostgreSQL that does not answer -----------------------------------------------------------


def test_postgresql_that_does_not_answer_fails_at_once() -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/eventcore"
    for command in (migrate_cli, tasks_cli):
        began = time.monotonic()
        line = one_line(command(url, timeout=30))
        assert time.monotonic() - began < 10
        assert "does not answer" in line and "Connection refused" in line


def _wait_for(path: Path, text: str, proc: subprocess.Popen[str], timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = path.read_text()
        if text in got:
            return got
        assert proc.poll() is None, f"it exited ({proc.returncode}): {got}"
        time.sleep(0.05)
    raise AssertionError(f"no {text!r} within {timeout}s: {path.read_text()}")


@pytest.mark.slow
def test_the_sql_projector_waits_for_postgresql(
    redis_url: str, namespace: str, tmp_path: Path
) -> None:
    """``eventcore sql`` started before its database: it says once that the
    database does not answer, keeps trying, and once a server listens there
    creates the tables and follows the log; SIGTERM ends it cleanly."""
    port = free_port()
    # The database every server has from the start ("eventcore" is made just
    # after the server accepts connections: a try then would be refused).
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    log_path = tmp_path / "sql.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTCORE_")}
    env |= {"REDIS_URL": redis_url, "EVENTCORE_NAMESPACE": namespace}
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "eventcore.cli", "sql", "--url", url],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        _wait_for(log_path, "does not answer", proc)
        with PostgresProcess(PostgresConfig(tmp_path / "pg", port=port, fsync=False)):
            _wait_for(log_path, "following the log", proc)
            db = open_database(url)
            try:
                assert schema_revision(db) == head_revision()
            finally:
                db.dispose()
            proc.terminate()
            proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = log_path.read_text()
    assert proc.returncode == 0, out
    assert "Traceback" not in out
    assert out.count("does not answer") == 1, out
    assert out.count("answers again") == 1, out


# -- PostgreSQL that refuses --------------------------------------------------------------------


def test_a_database_that_does_not_exist(pg_server: PostgresProcess) -> None:
    url = pg_server.url_for("nosuch" + uuid.uuid4().hex[:8])
    for res in (migrate_cli(url), tasks_cli(url)):
        line = one_line(res)
        assert "refused" in line and "does not exist" in line


@pytest.fixture
def weak(pg_url: str) -> Iterator[tuple[str, str]]:
    """A role that may connect to ``pg_url``'s database but not create in
    it, and the URL to connect as it."""
    role = "weak" + uuid.uuid4().hex[:8]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f"REVOKE CREATE ON DATABASE {pg_url.rsplit('/', 1)[1]} FROM PUBLIC")
    yield role, pg_url.replace("postgres@", f"{role}@")
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"DROP OWNED BY {role}")
        conn.execute(f"DROP ROLE {role}")


def test_no_right_to_create_the_schema(weak: tuple[str, str]) -> None:
    line = one_line(migrate_cli(weak[1]))
    assert "refused: permission denied for database" in line


def test_no_right_to_create_in_the_schema(pg_url: str, weak: tuple[str, str]) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {SCHEMA}")
    line = one_line(migrate_cli(weak[1]))
    assert f"refused: permission denied for schema {SCHEMA}" in line


def test_rights_on_the_schema_alone_are_enough(pg_url: str, weak: tuple[str, str]) -> None:
    """The usual least privilege: the administrator makes the schema and
    lets the role create in it, not in the whole database."""
    role, url = weak
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {SCHEMA}")
        conn.execute(f"GRANT USAGE, CREATE ON SCHEMA {SCHEMA} TO {role}")
    res = migrate_cli(url)
    assert res.returncode == 0, res.stderr
    res = tasks_cli(url)
    assert (res.returncode, res.stdout) == (0, "no tasks\n"), res.stderr


def test_no_right_to_read_the_tables(pg_url: str, weak: tuple[str, str]) -> None:
    """Tables made by their owner, read by a role that may not: the line
    says so, not that there are no tables."""
    assert migrate_cli(pg_url).returncode == 0
    line = one_line(tasks_cli(weak[1]))
    assert "permission denied" in line


# -- schemas -------------------------------------------------------------------------------------


def _version_table(db: Database) -> str:
    return "alembic_version" if db.sqlite else f"{SCHEMA}.alembic_version"


def _snapshot(db: Database) -> dict[str, object]:
    """Every table with its columns and rows (what "nothing changed" compares)."""
    with db.engine.connect() as conn:
        inspector = sa.inspect(conn)
        schema = None if db.sqlite else SCHEMA
        out: dict[str, object] = {}
        for name in inspector.get_table_names(schema=schema):
            t = sa.Table(name, sa.MetaData(), schema=schema, autoload_with=conn)
            out[name] = ([c["name"] for c in inspector.get_columns(name, schema=schema)],
                         sorted(map(tuple, conn.execute(sa.select(t)))))  # fmt: skip
        return out


def test_a_newer_schema_is_refused_and_left_as_it_is(
    sql_db: Database, redis_url: str, namespace: str
) -> None:
    db = sql_db
    migrate(db)
    with db.engine.begin() as conn:
        conn.exec_driver_sql(f"UPDATE {_version_table(db)} SET version_num = '9999_future'")
    before = _snapshot(db)
    url = db.sa_url.render_as_string(hide_password=False)
    env = {"REDIS_URL": redis_url, "EVENTCORE_NAMESPACE": namespace}
    for res in (migrate_cli(url), tasks_cli(url), cli("sql", "--url", url, env=env)):
        line = one_line(res)
        assert "schema version 9999_future, newer than this eventcore knows" in line
        assert "nothing was changed" in line
    assert _snapshot(db) == before


def test_a_migration_that_fails_midway_leaves_nothing(sql_db: Database) -> None:
    """``task_events`` is in the way, so creating it fails after ``tasks``
    was made: the whole migration rolls back."""
    db = sql_db
    with db.engine.begin() as conn:
        if not db.sqlite:
            conn.exec_driver_sql(f"CREATE SCHEMA {SCHEMA}")
        table = "task_events" if db.sqlite else f"{SCHEMA}.task_events"
        conn.exec_driver_sql(f"CREATE TABLE {table} (x integer)")
    before = _snapshot(db)
    line = one_line(migrate_cli(db.sa_url.render_as_string(hide_password=False)))
    assert "refused" in line and "task_events" in line and "already exists" in line
    assert _snapshot(db) == before  # no tasks, no alembic_version
    assert schema_revision(db) is None


# -- query values ------------------------------------------------------------------------------


@pytest.fixture
def history_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'history.sqlite3'}"
    assert migrate_cli(url).returncode == 0
    return url


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [
        ("--since", "garbage", "bad --since value 'garbage'"),
        ("--until", "1714564800000-0", "bad --until value '1714564800000-0'"),
        ("--limit", "0", "--limit: must be between 1 and 1000"),
        ("--limit", "5000", "--limit: must be between 1 and 1000"),
        ("--cursor", "bad", "--cursor: not a cursor"),
    ],
)
def test_a_bad_query_value_names_the_option(
    history_url: str, option: str, value: str, says: str
) -> None:
    assert says in one_line(tasks_cli(history_url, option, value))


def test_stats_name_a_bad_time_too(history_url: str) -> None:
    line = one_line(cli("history", "stats", "--url", history_url, "--since", "soon"))
    assert "bad --since value 'soon'" in line
