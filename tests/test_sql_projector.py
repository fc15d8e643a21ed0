"""The SQL projector (:mod:`history.follower`) on a real Redis, into a
SQLite file and a PostgreSQL database: every task log entry and node entry
becomes exactly one row, the task rows equal the task views folded from the
same log, and a projector started again continues from the tracking rows
without writing anything twice."""

from __future__ import annotations

import asyncio
import json

from eventcore.log import EventLog
from eventcore.server.process import free_port
from history.cli import _catch_up
from history.database import Database, open_database
from history.follower import GROUP, SqlProjector
from history.schema import nodes, tasks
from projections.replay import replay
from projections.tools import log_after
from tests.replaykit import cli, submit, workload
from tests.sqlkit import drain, event_keys, expected_tasks, log_entries, positions, table


async def test_the_log_becomes_rows_once(log: EventLog, sql_db: Database) -> None:
    await workload(log, 20, leave=3)
    db = sql_db
    projector = SqlProjector(log, db, batch=7)
    applied = await drain(projector)
    entries = await log_entries(log)
    assert applied == len(entries)
    te, ne = event_keys(db)
    assert sorted(te + ne) == sorted(entries)
    whole = replay(await log_after(log, {}))
    assert table(db, tasks, "task_id") == expected_tasks(whole)
    assert set(table(db, nodes, "node")) == {"c1"}

    # More work; a new projector on the same database continues where it stopped.
    await workload(log, 5, leave=1)
    again = SqlProjector(log, db, batch=1000)
    await drain(again)
    entries = await log_entries(log)
    te, ne = event_keys(db)
    assert sorted(te + ne) == sorted(entries)
    assert again.applied == len(entries) - applied
    whole = replay(await log_after(log, {}))
    assert table(db, tasks, "task_id") == expected_tasks(whole)


async def test_the_sql_group_follows_what_was_written(log: EventLog, sql_db: Database) -> None:
    await workload(log, 6, leave=0)
    db = sql_db
    projector = SqlProjector(log, db)
    await drain(projector)
    await projector.publish()
    tracked = positions(db)
    for stream, last in tracked.items():
        info = {g["name"].decode(): g for g in await log.redis.xinfo_groups(stream)}
        assert info[GROUP]["last-delivered-id"].decode() == last


async def test_catching_up_gives_way_to_waiting_when_the_database_goes(log: EventLog) -> None:
    """`eventcore sql` catches up with a progress line first; a database that
    stops answering then must not end the process (run() waits for it)."""
    await workload(log, 30, leave=0)
    gone = open_database(f"postgresql://postgres@127.0.0.1:{free_port()}/none", writer=True)
    projector = SqlProjector(log, gone, batch=5)
    try:
        await _catch_up(projector, asyncio.Event())  # returns instead of raising
    finally:
        gone.dispose()
    assert projector.applied == 0


async def test_status_says_how_far_the_sql_history_is(
    redis_url: str, log: EventLog, sql_db: Database
) -> None:
    env = {
        "REDIS_URL": redis_url,
        "EVENTCORE_NAMESPACE": log.keys.namespace,
        "EVENTCORE_PARTITIONS": str(log.keys.partitions),
    }

    async def line() -> tuple[str, object]:
        text = await asyncio.to_thread(cli, "status", env=env)
        assert text.returncode == 0, text.stderr
        as_json = await asyncio.to_thread(cli, "status", "--json", env=env)
        sql_lines = [x for x in text.stdout.splitlines() if x.startswith("sql history:")]
        return sql_lines[0], json.loads(as_json.stdout)["sql_behind"]

    await workload(log, 3, leave=0)
    assert await line() == ("sql history: no SQL projector has written yet (`eventcore sql`)", None)
    projector = SqlProjector(log, sql_db)
    await drain(projector)
    await projector.publish()
    assert await line() == ("sql history: up to date with the log", 0)
    await submit(log, 2)
    assert await line() == ("sql history: 2 log entries behind", 2)
