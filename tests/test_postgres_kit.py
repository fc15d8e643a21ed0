"""The PostgreSQL server kit (:mod:`eventcore.server.postgres`) and its fixtures,
against a real PostgreSQL: start, connect, kill -9, stop, restart."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import psycopg
import pytest

from eventcore.errors import EventcoreError
from eventcore.server.postgres import (
    ENV_BINDIR,
    PostgresConfig,
    PostgresNotFound,
    PostgresProcess,
    PostgresStartError,
    find_postgres,
)


def _rows(url: str) -> list[tuple[int]]:
    with psycopg.connect(url, connect_timeout=5) as conn:
        return conn.execute("SELECT x FROM t ORDER BY x").fetchall()


def _refused(url: str) -> bool:
    try:
        psycopg.connect(url, connect_timeout=2).close()
    except psycopg.OperationalError:
        return True
    return False


def _process_gone(pid: int) -> bool:
    """Exited: no /proc entry, or a zombie waiting for its new parent to reap it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return True
    return state == "Z"


def test_pg_url_is_a_new_empty_database(pg_server: PostgresProcess, pg_url: str) -> None:
    assert pg_url.startswith(f"postgresql://postgres@127.0.0.1:{pg_server.port}/t")
    with psycopg.connect(pg_url, autocommit=True, connect_timeout=5) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
        assert tables == (0,)
        conn.execute("CREATE TABLE t (x int)")
        conn.execute("INSERT INTO t VALUES (1)")
    assert _rows(pg_url) == [(1,)]
    # The server's own database is there as well, and is another one.
    with psycopg.connect(pg_server.url, connect_timeout=5) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("eventcore",)
        assert conn.execute("SELECT to_regclass('t')").fetchone() == (None,)


def test_server_runs_as_postgres_when_root(pg_server: PostgresProcess) -> None:
    expected = pwd.getpwnam("postgres").pw_uid if os.geteuid() == 0 else os.geteuid()
    assert pg_server.pid is not None
    assert os.stat(f"/proc/{pg_server.pid}").st_uid == expected


@pytest.mark.slow
def test_kill_keeps_committed_rows_and_loses_the_rest(tmp_path: Path) -> None:
    with PostgresProcess(PostgresConfig(tmp_path)) as pg:
        with psycopg.connect(pg.url, autocommit=True, connect_timeout=5) as conn:
            conn.execute("CREATE TABLE t (x int)")
            conn.execute("INSERT INTO t VALUES (1)")
        open_tx = psycopg.connect(pg.url, connect_timeout=5)
        open_tx.execute("INSERT INTO t VALUES (2)")
        backend = open_tx.info.backend_pid

        pg.kill()
        assert not pg.running
        # The backends go with the postmaster: left alive they would keep its
        # shared memory in use, and the next start would be refused.
        assert _process_gone(backend)
        assert _refused(pg.url)
        open_tx.close()

        pg.start()
        assert _rows(pg.url) == [(1,)]


@pytest.mark.slow
def test_stop_then_start_again(tmp_path: Path) -> None:
    pg = PostgresProcess(PostgresConfig(tmp_path, fsync=False))
    with pg:
        url = pg.url
        with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
            conn.execute("CREATE TABLE t (x int)")
            conn.execute("INSERT INTO t VALUES (1)")
        pg.stop()
        assert not pg.running
        assert _refused(url)

        assert pg.start() == url
        assert _rows(url) == [(1,)]
        assert pg.restart() == url
        assert _rows(url) == [(1,)]
        cluster = pg.cluster_dir
    assert cluster is not None
    assert not pg.running
    if cluster != tmp_path / "pgdata":
        # Kept outside tmp_path (as root: the postgres user cannot enter
        # pytest's directories), so close() removed it.
        assert not cluster.exists()
        assert not (tmp_path / "pgdata").is_symlink()


def test_start_error_carries_the_server_log(tmp_path: Path) -> None:
    config = PostgresConfig(tmp_path, fsync=False, settings={"shared_buffers": "lots"})
    pg = PostgresProcess(config)
    try:
        with pytest.raises(PostgresStartError, match="shared_buffers"):
            pg.start()
        assert not pg.running
    finally:
        pg.close()


def test_a_taken_port_is_an_error(tmp_path: Path, pg_server: PostgresProcess) -> None:
    """The session's server answers on that port, with the same trust login;
    the start must not take it for the new one."""
    pg = PostgresProcess(PostgresConfig(tmp_path, port=pg_server.port, fsync=False))
    try:
        with pytest.raises(PostgresStartError, match="Address already in use"):
            pg.start()
    finally:
        pg.close()


def test_a_wrong_bin_directory_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(PostgresNotFound, match="no initdb or postgres program") as caught:
        find_postgres(tmp_path)
    assert str(tmp_path) in str(caught.value)
    assert "apt-get install postgresql" in str(caught.value)

    # Programs of those names that are something else.
    for name in ("initdb", "postgres"):
        (tmp_path / name).write_text("#!/bin/sh\necho 'hello'\n")
        (tmp_path / name).chmod(0o755)
    with pytest.raises(PostgresNotFound, match="not a PostgreSQL server"):
        find_postgres(tmp_path)

    # The environment's choice is used alone too, and fails before any I/O.
    monkeypatch.setenv(ENV_BINDIR, str(tmp_path / "nowhere"))
    with pytest.raises(EventcoreError, match=rf"\${ENV_BINDIR}"):
        PostgresProcess(PostgresConfig(tmp_path / "data"))
    assert not (tmp_path / "data").exists()
