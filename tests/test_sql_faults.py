"""``eventcore sql`` under faults, as real processes on real servers, while a
real worker runs a stream of tasks:

- the SQL projector killed with SIGKILL at random moments, again and again;
- PostgreSQL stopped under load for a while and started again;
- two SQL projectors on the same database at once.

Afterwards, every time: each log entry has exactly one event row (the
(stream, entry id) sets are equal and so are the counts), each task exactly
one row equal to its fold of the log, the tracking rows counted each entry
once, and ``verify`` finds no difference. The sizes follow
``EVENTCORE_TEST_FAULT_SIZE`` (:mod:`tests.faultkit`).

The last three tests pin down, each made certain, races the fault tests hit
now and then: two migrations of a new database at once, two projectors
catching up at once, and PostgreSQL going away while a new database fills.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
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
from tests.webkit import projector, served, sse_clients_become, sse_events
from tests.workerkit import fast_settings, spawn_worker, spec, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(fault_size(180, 90))]

PARTITIONS = 2  # two task logs and the node stream: a batch moves several tracking rows
BATCH = 50  # small batches: many transactions for a kill to land in
KILLS = fault_size(20, 6)
OUTAGE = fault_size(20.0, 5.0)  # seconds PostgreSQL is down
TOGETHER = fault_size(8.0, 4.0)  # seconds two SQL projectors run side by side
STARTED = "sql: following the log into"
WAITING = "waiting for it"
ANSWERS = "answers again"
CONFLICT = "another writer applied entries"
PROBES = {"entity": "task", "kind": "sleep", "status": "succeeded"}  # SSE of probe tasks


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


def _waits_on_a_lock(url: str) -> bool:
    """Whether another connection to the database waits on a lock."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
        ).fetchone()
    return bool(row and row[0])


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


async def _unfinished(log: EventLog, task_ids: list[str]) -> list[str]:
    by_partition: dict[int, list[str]] = {}
    for t in task_ids:
        by_partition.setdefault(log.keys.partition(t), []).append(t)
    left: list[str] = []
    for p, ids in by_partition.items():
        ended = await log.redis.hmget(log.keys.done(p), ids)
        left += [t for t, e in zip(ids, ended, strict=True) if e is None]
    return left


async def _wait_finished(log: EventLog, task_ids: list[str], timeout: float = 90) -> None:
    pending = list(task_ids)

    async def done() -> bool:
        nonlocal pending
        pending = await _unfinished(log, pending)
        return not pending

    await wait_until(done, timeout=timeout, what="every task ending", interval=0.1)


async def submit_stream(log: EventLog, stop: asyncio.Event, rng: random.Random) -> list[str]:
    """Submit no-op tasks for the worker in small bursts until ``stop``;
    the task ids."""
    ids: list[str] = []
    while not stop.is_set():
        burst = [Submission(spec=spec("noop", i=len(ids) + k)) for k in range(rng.randint(1, 4))]
        ids += [s.task_id for s in await log.submit_many(burst)]
        await asyncio.sleep(rng.uniform(0.01, 0.05))  # the load's pace, not a wait on anything
    return ids


@contextlib.asynccontextmanager
async def submitting(log: EventLog, seed: int) -> AsyncIterator[list[str]]:
    """Submits in the background while the block runs; the list holds every
    task id submitted once the block is left."""
    stop = asyncio.Event()
    writer = asyncio.create_task(submit_stream(log, stop, random.Random(seed)))
    ids: list[str] = []
    try:
        yield ids
    finally:
        stop.set()
        ids += await writer


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


async def assert_exactly_once(log: EventLog, db: Database, submitted: list[str]) -> None:
    """:func:`assert_rows_once`, and each task submitted has its row, succeeded."""
    rows = await assert_rows_once(log, db)
    assert set(rows) == set(submitted)
    assert {row["status"] for row in rows.values()} == {"succeeded"}


@pytest.fixture
def plog(r, namespace: str) -> EventLog:
    return EventLog(r, Keys(namespace, partitions=PARTITIONS))


@pytest.fixture
def reader(sql_url: str) -> Iterator[Database]:
    """The test's own connection to the database under test (not a writer)."""
    db = open_database(sql_url)
    yield db
    db.dispose()


# -- 1. kill -9 ---------------------------------------------------------------------------

OPEN_TX = "unexpected EOF on client connection with an open transaction"
# When a kill falls, and the longest random wait before it: while the process
# starts (opens the database, migrates, reads the positions); just after it
# began following, while it catches up with what was written while it was
# down; once it has written a batch, while it follows the log.
PHASES = {"starting": 1.0, "catching up": 0.3, "following": 0.3}


@pytest.fixture(params=["sqlite", "postgresql"])
def killed_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Path | None]]:
    """The database of the kill test: a SQLite file, or a PostgreSQL of the
    test's own, whose server log tells how many kills fell inside an open
    transaction. (The URL, and that log.)"""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'history.sqlite3'}", None
        return
    with PostgresProcess(PostgresConfig(tmp_path / "pg", fsync=False)) as pg:
        yield pg.url, pg.log_path


async def test_sql_projector_sigkilled_at_random_writes_each_entry_once(
    plog: EventLog,
    redis_url: str,
    namespace: str,
    killed_db: tuple[str, Path | None],
    procs: Procs,
    tmp_path: Path,
) -> None:
    log, rng = plog, random.Random(7)
    url, server_log = killed_db
    reader = open_database(url)
    sql_log = tmp_path / "sql.log"
    worker = procs.worker(redis_url, namespace, tmp_path / "worker.log")
    phases = dict.fromkeys(PHASES, 0)
    t0 = time.monotonic()
    try:
        async with submitting(log, seed=3) as submitted:
            for _ in range(KILLS):
                (phase,) = rng.choices(list(PHASES), weights=(1, 2, 2))
                phases[phase] += 1
                starts = _text(sql_log).count(STARTED)
                before = await asyncio.to_thread(_positions, reader)
                proc = procs.sql(redis_url, namespace, url, sql_log)
                if phase != "starting":
                    await _logged(sql_log, STARTED, starts + 1)
                if phase == "following":
                    await wait_until(
                        partial(asyncio.to_thread, _moved, reader, before),
                        timeout=30,
                        what="a batch written by this run",
                    )
                await asyncio.sleep(rng.uniform(0.0, PHASES[phase]))  # a random moment of it
                assert proc.poll() is None, _text(sql_log)[-3000:]
                proc.send_signal(signal.SIGKILL)
                assert await asyncio.to_thread(proc.wait, 10) == -signal.SIGKILL
            if server_log is not None:
                # One more kill that surely falls inside a transaction: the
                # tracking table held locked, the SQL projector's next batch
                # waits on it after BEGIN, and is killed there.
                starts = _text(sql_log).count(STARTED)
                proc = procs.sql(redis_url, namespace, url, sql_log)
                await _logged(sql_log, STARTED, starts + 1)
                with psycopg.connect(url) as locker:
                    locker.execute(f"LOCK TABLE {SCHEMA}.tracking IN EXCLUSIVE MODE")
                    await wait_until(
                        partial(asyncio.to_thread, _waits_on_a_lock, url),
                        timeout=30,
                        what="a batch waiting on the locked tracking table",
                    )
                    proc.send_signal(signal.SIGKILL)
                    assert await asyncio.to_thread(proc.wait, 10) == -signal.SIGKILL
                    locker.rollback()
        kill_seconds = time.monotonic() - t0
        in_tx = _text(server_log).count(OPEN_TX) if server_log else None
        if in_tx is not None:
            assert in_tx > 0, "no kill fell inside a transaction"
        await _wait_finished(log, submitted)
        await _stop(worker, tmp_path / "worker.log")  # then nothing more is written

        last_run = procs.sql(redis_url, namespace, url, sql_log)
        await _wait_reached(reader, log)
        await _stop(last_run, sql_log)
        await assert_exactly_once(log, reader, submitted)
    finally:
        reader.dispose()
    print(
        f"\nsql kill -9: {KILLS} kills in {kill_seconds:.1f}s, {len(submitted)} tasks, "
        f"{len(await log_entries(log))} entries; kills {phases}; "
        f"kills inside a transaction: {'?' if in_tx is None else in_tx}"
    )


# -- 2. PostgreSQL down ------------------------------------------------------------------


@pytest.fixture
def own_pg(tmp_path: Path) -> Iterator[PostgresProcess]:
    """A PostgreSQL of this test's own, to stop and start."""
    with PostgresProcess(PostgresConfig(tmp_path / "pg", fsync=False)) as pg:
        yield pg


async def _one_task_through_redis(
    client: httpx.AsyncClient, stream: httpx.Response, log: EventLog
) -> str:
    """Submit a probe task over HTTP; it ends, its Redis view says so, and the
    SSE stream (of probes succeeding) brings the change live. Its id."""
    probe = {"kind": "sleep", "queue": "q", "params": {"seconds": 0.05, "steps": 2}}
    res = await client.post("/v1/tasks", json=probe)
    assert res.status_code == 202, res.text
    task_id = res.json()["task_id"]
    await _wait_finished(log, [task_id], timeout=20)

    async def shown() -> bool:
        got = await client.get(f"/v1/tasks/{task_id}")
        return got.status_code == 200 and got.json()["status"] == "succeeded"

    await wait_until(shown, timeout=20, what=f"the view of {task_id} saying succeeded")
    (event,) = await sse_events(stream, limit=1, timeout=20)
    data = json.loads(event["data"])
    assert (data["id"], data["view"]["status"]) == (task_id, "succeeded"), data
    return task_id


async def test_postgres_down_under_load_is_waited_out(
    plog: EventLog,
    redis_url: str,
    namespace: str,
    own_pg: PostgresProcess,
    procs: Procs,
    tmp_path: Path,
) -> None:
    log, pg = plog, own_pg
    sql_log = tmp_path / "sql.log"
    db = open_database(pg.url)
    try:
        worker = procs.worker(redis_url, namespace, tmp_path / "worker.log")
        sql = procs.sql(redis_url, namespace, pg.url, sql_log)
        settings = fast_settings(namespace, PARTITIONS)
        async with (
            projector(log),
            served(redis_url, settings) as base,
            httpx.AsyncClient(base_url=base, timeout=10) as client,
            client.stream("GET", "/v1/stream", params=PROBES) as stream,
            submitting(log, seed=5) as submitted,
        ):
            await sse_clients_become(client, 1)
            await _logged(sql_log, STARTED)
            await wait_until(
                partial(asyncio.to_thread, _moved, db, {}), timeout=20, what="the first rows"
            )
            await asyncio.to_thread(pg.stop)
            down = time.monotonic()
            await _logged(sql_log, WAITING, timeout=OUTAGE, proc=sql)
            during: list[str] = []
            while time.monotonic() - down < OUTAGE:
                during.append(await _one_task_through_redis(client, stream, log))
                assert sql.poll() is None, _text(sql_log)[-3000:]
            assert ANSWERS not in _text(sql_log)
            await asyncio.to_thread(pg.start)
            await _logged(sql_log, ANSWERS, timeout=40)
            after = await _one_task_through_redis(client, stream, log)
        await _wait_finished(log, submitted)
        await _stop(worker, tmp_path / "worker.log")
        await _wait_reached(db, log)
        await _stop(sql, sql_log)
        text = _text(sql_log)
        assert text.count(WAITING) == 1, text  # once per outage
        await assert_exactly_once(log, db, [*submitted, *during, after])
        print(f"\npostgres down {OUTAGE:g}s: {len(during)} tasks through Redis meanwhile")
    finally:
        db.dispose()


# -- 3. two SQL projectors on one database ------------------------------------------------


async def test_two_sql_projectors_at_once_write_each_entry_once(
    plog: EventLog,
    redis_url: str,
    namespace: str,
    sql_url: str,
    reader: Database,
    procs: Procs,
    tmp_path: Path,
) -> None:
    log = plog
    logs = [tmp_path / "sql-a.log", tmp_path / "sql-b.log"]
    worker = procs.worker(redis_url, namespace, tmp_path / "worker.log")
    async with submitting(log, seed=9) as submitted:
        # Started together on an empty database: both migrate it, too (see
        # the next test).
        pair = [procs.sql(redis_url, namespace, sql_url, p) for p in logs]
        for p in logs:
            await _logged(p, STARTED)
        await asyncio.sleep(TOGETHER)  # how long the load runs, not a wait on anything
    await _wait_finished(log, submitted)
    await _stop(worker, tmp_path / "worker.log")
    await _wait_reached(reader, log)
    for proc, p in zip(pair, logs, strict=True):
        await _stop(proc, p)
    conflicts = sum(_text(p).count(CONFLICT) for p in logs)
    assert conflicts, "the two never raced for a batch"
    await assert_exactly_once(log, reader, submitted)
    verified = cli("sql", "verify", "--url", sql_url, env=_env(redis_url, namespace))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    print(f"\ntwo sql projectors: {conflicts} conflicts, {len(submitted)} tasks")


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
