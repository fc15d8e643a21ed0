"""``eventcore sql`` under faults, as real processes on real servers: two
started together on a new database, or over a backlog; PostgreSQL going
away while a new database fills. Afterwards each log entry has exactly one
event row, each task one row equal to its fold of the log, and ``verify``
finds no difference.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
import pytest

from eventcore.ids import stream_id_key
from eventcore.keys import Keys
from eventcore.log import EventLog, Submission
from eventcore.server.postgres import PostgresConfig, PostgresProcess
from history.database import Database, migrate, open_database, schema_revision
from history.follower import SqlProjector
from history.schema import SCHEMA, tasks, tracking
from history.verify import verify_history
from projections.points import log_streams
from projections.replay import replay
from projections.tools import log_after
from tests.faultkit import fault_size
from tests.replaykit import cli, workload
from tests.sqlkit import event_keys, expected_tasks, log_entries, positions, table
from tests.workerkit import spawn_worker, spec, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(fault_size(180, 90))]

PARTITIONS = 2  # two task logs and the node stream: a batch moves several tracking rows
BATCH = 50  # small batches: many transactions for a kill to land in
STARTED = "sql: following the log into"
WAITING = "waiting for it"
ANSWERS = "answers again"
CONFLICT = "another writer applied entries"


def _env(redis_url: str, namespace: str) -> dict[str, str]:
    """The settings of every eventcore process a test starts, as variables."""
    return {
        "REDIS_URL": redis_url,
        "EVENTCORE_NAMESPACE": namespace,
        "EVENTCORE_PARTITIONS": str(PARTITIONS),
    }


def spawn_sql(
    redis_url: str, namespace: str, url: str, log_path: Path, batch: int = BATCH
) -> subprocess.Popen[bytes]:
    """``eventcore sql --url URL`` as a real process; its stderr (the warnings
    it logs) is appended to ``log_path``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTCORE_")}
    env.update(_env(redis_url, namespace))
    with log_path.open("ab") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "eventcore.cli", "sql", "--url", url, "--batch", str(batch)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )


class Procs:
    """The processes a test started: each one SIGKILLed at the end if still alive."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes]] = []

    def add(self, proc: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
        self.started.append(proc)
        return proc

    def worker(self, redis_url: str, namespace: str, log_path: Path) -> subprocess.Popen[bytes]:
        with log_path.open("ab") as err:
            return self.add(
                spawn_worker(
                    redis_url, namespace, "w1", ["--cpu"], partitions=PARTITIONS, stderr=err
                )
            )

    def sql(
        self, redis_url: str, namespace: str, url: str, log_path: Path, batch: int = BATCH
    ) -> subprocess.Popen[bytes]:
        return self.add(spawn_sql(redis_url, namespace, url, log_path, batch))

    def end(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


@pytest.fixture
def procs() -> Iterator[Procs]:
    started = Procs()
    try:
        yield started
    finally:
        started.end()


def _text(path: Path) -> str:
    return path.read_text() if path.exists() else ""


async def _logged(
    path: Path,
    line: str,
    count: int = 1,
    timeout: float = 30,
    proc: subprocess.Popen[bytes] | None = None,
) -> None:
    """Until ``path`` holds ``line`` at least ``count`` times; fails at once
    if ``proc`` (the process logging there) has ended."""

    def seen() -> bool:
        text = _text(path)
        assert proc is None or proc.poll() is None, f"it ended:\n{text[-3000:]}"
        return text.count(line) >= count

    await wait_until(
        seen, timeout=timeout, what=f"{count}x {line!r} in {path.name}:\n{_text(path)[-3000:]}"
    )


async def _stop(proc: subprocess.Popen[bytes], log_path: Path) -> None:
    """SIGTERM, and the process ends cleanly."""
    assert proc.poll() is None, _text(log_path)[-3000:]
    proc.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(proc.wait, 30)
    assert code == 0, _text(log_path)[-3000:]


# -- the log and the tables ------------------------------------------------------------


async def _tips(log: EventLog) -> dict[str, str]:
    """The newest entry id of every stream the SQL projector follows."""
    out: dict[str, str] = {}
    for stream in log_streams(log.keys):
        newest = await log.redis.xrevrange(stream, count=1)
        if newest:
            out[stream] = newest[0][0].decode()
    return out


def _positions(db: Database) -> dict[str, str]:
    """The tracking rows' positions; none before the tables are made."""
    return positions(db) if schema_revision(db) is not None else {}


def _moved(db: Database, since: dict[str, str]) -> bool:
    return _positions(db) != since


def _reached(db: Database, tips: dict[str, str]) -> bool:
    have = positions(db)
    return all(s in have and stream_id_key(have[s]) >= stream_id_key(i) for s, i in tips.items())


async def _wait_reached(db: Database, log: EventLog, timeout: float = 60) -> None:
    """Until the tracking rows reach every stream's newest entry as it is now."""
    tips = await _tips(log)
    await wait_until(
        lambda: asyncio.to_thread(_reached, db, tips),
        timeout=timeout,
        what=f"the SQL projector reaching {tips}",
        interval=0.1,
    )


async def assert_rows_once(log: EventLog, db: Database) -> dict[str, dict[str, Any]]:
    """Every log entry one event row, every task one row equal to its fold,
    the tracking rows counting each entry once, and verify finds nothing.
    The task rows."""
    entries = await log_entries(log)
    te, ne = await asyncio.to_thread(event_keys, db)
    assert len(te) + len(ne) == len(entries)
    assert sorted(te + ne) == sorted(entries)
    applied = await asyncio.to_thread(table, db, tracking, "stream")
    assert sum(row["applied"] for row in applied.values()) == len(entries)
    rows = await asyncio.to_thread(table, db, tasks, "task_id")
    assert rows == expected_tasks(replay(await log_after(log, {})))
    assert await verify_history(SqlProjector(log, db)) == []
    return rows


@pytest.fixture
def plog(r, namespace: str) -> EventLog:
    return EventLog(r, Keys(namespace, partitions=PARTITIONS))


# -- 1. kill -9 ---------------------------------------------------------------------------


# -- 2. PostgreSQL down ------------------------------------------------------------------


@pytest.fixture
def own_pg(tmp_path: Path) -> Iterator[PostgresProcess]:
    """A PostgreSQL of this test's own, to stop and start."""
    with PostgresProcess(PostgresConfig(tmp_path / "pg", fsync=False)) as pg:
        yield pg


# -- 3. two SQL projectors on one database ------------------------------------------------


async def _waiting_on_locks(url: str, n: int) -> None:
    """Until ``n`` sessions of the database wait for a lock."""

    async def waiting() -> bool:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            cur = await conn.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            row = await cur.fetchone()
            return row is not None and row[0] >= n

    await wait_until(waiting, timeout=30, what=f"{n} sessions waiting for a lock")


async def test_two_migrations_of_a_new_postgres_database_at_once(pg_url: str) -> None:
    """Regression: two ``eventcore sql`` started together on a new PostgreSQL
    database both created the schema; the second failed with "duplicate key
    value violates unique constraint pg_namespace_nspname_index" and exited,
    an error waiting cannot cure. Now migrations queue on an advisory lock,
    and the second finds the schema made.

    The race is made certain: a third session creates the schema and holds it
    uncommitted until both migrations wait behind it, then rolls back."""
    holder = await psycopg.AsyncConnection.connect(pg_url)
    try:
        await holder.execute(f"CREATE SCHEMA {SCHEMA}")
        both = [
            asyncio.create_task(asyncio.to_thread(cli, "sql", "migrate", "--url", pg_url))
            for _ in range(2)
        ]
        await _waiting_on_locks(pg_url, 2)
        await holder.rollback()
        done = await asyncio.gather(*both)
    finally:
        await holder.close()
    for run in done:
        assert run.returncode == 0, run.stderr
    # One made the tables; the other found them made.
    said = sorted(run.stdout.rsplit("(", 1)[-1].strip() for run in done)
    assert said == ["already)", "was empty)"], said
    db = open_database(pg_url)
    try:
        assert schema_revision(db) is not None
    finally:
        db.dispose()


async def test_two_sql_projectors_starting_together_over_a_backlog(
    plog: EventLog, redis_url: str, namespace: str, pg_url: str, procs: Procs, tmp_path: Path
) -> None:
    """Regression: over a log with a backlog, ``eventcore sql`` catches up
    first (with a progress line), outside the loop that waits out conflicts;
    two started together both caught up, and the one that lost the first
    batch exited on "another writer applied entries … first".

    Made certain: the tracking table is locked until both wait to read their
    positions, so both start from none."""
    log = plog
    await workload(log, 30)
    await asyncio.to_thread(_migrated, pg_url)
    logs = [tmp_path / "sql-a.log", tmp_path / "sql-b.log"]
    holder = await psycopg.AsyncConnection.connect(pg_url)
    try:
        await holder.execute(f"LOCK TABLE {SCHEMA}.{tracking.name} IN ACCESS EXCLUSIVE MODE")
        # Batches of 5: the backlog is more than 10 batches, so they catch up first.
        pair = [procs.sql(redis_url, namespace, pg_url, p, batch=5) for p in logs]
        await _waiting_on_locks(pg_url, 2)
        await holder.rollback()
    finally:
        await holder.close()
    await wait_until(lambda: any(CONFLICT in _text(p) for p in logs), timeout=30, what="a conflict")
    db = open_database(pg_url)
    try:
        await _wait_reached(db, log)
        for proc, p in zip(pair, logs, strict=True):
            await _stop(proc, p)
        await assert_rows_once(log, db)
    finally:
        db.dispose()


def _migrated(url: str) -> None:
    db = open_database(url, writer=True)
    try:
        migrate(db)
    finally:
        db.dispose()


async def test_postgres_down_while_a_new_history_fills(
    plog: EventLog,
    redis_url: str,
    namespace: str,
    own_pg: PostgresProcess,
    procs: Procs,
    tmp_path: Path,
) -> None:
    """Regression: a new database is filled from the log first (with a
    progress line), outside the loop that waits out the database going away;
    PostgreSQL stopping then made ``eventcore sql`` exit with "does not
    answer" instead of waiting."""
    log, pg = plog, own_pg
    for i in range(0, 1500, 500):
        await log.submit_many([Submission(spec=spec("noop", i=i + k)) for k in range(500)])
    sql_log = tmp_path / "sql.log"
    db = open_database(pg.url)
    try:
        # One entry a stream a batch: the 1500 entries take a while.
        sql = procs.sql(redis_url, namespace, pg.url, sql_log, batch=1)
        await wait_until(
            partial(asyncio.to_thread, _moved, db, {}), timeout=30, what="the first rows"
        )
        await asyncio.to_thread(pg.stop)
        await _logged(sql_log, WAITING, proc=sql)
        assert "backfill interrupted" in _text(sql_log)  # it fell where it should
        await asyncio.to_thread(pg.start)
        await _logged(sql_log, ANSWERS, timeout=40)
        await _wait_reached(db, log)
        await _stop(sql, sql_log)
        await assert_rows_once(log, db)
    finally:
        db.dispose()
