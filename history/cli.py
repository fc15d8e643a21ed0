"""The SQL history's commands: ``eventcore sql`` (the SQL projector and its
tools) and ``eventcore history`` (queries).

- ``eventcore sql``: follow the log into the database (creating or
  migrating its tables first; a new database over a trimmed log starts from
  the latest snapshot); a progress line on a terminal while it catches up.
- ``eventcore sql migrate``: only bring the schema up to date.
- ``eventcore sql verify``: compare the tables with a fold of the log.
- ``eventcore sql backfill FILE``: fold an export (``events export``) into the
  tables, e.g. the history a trim removed from the log.
- ``eventcore sql rebuild``: empty the tables and fill them again from the
  log (and the latest snapshot).
- ``eventcore history tasks|stats``: what ``/v1/history/tasks|stats`` answer.

``--url`` (or ``sql.url``, ``EVENTCORE_SQL__URL``) picks the database;
unset, it is ``history.sqlite3`` in the data directory. Every problem with
the database is one line (``eventcore: error: the SQL database … refused:
…``) and exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec
from redis.exceptions import RedisError

from eventcore.config import Settings
from eventcore.connection import connect
from eventcore.errors import EventcoreError
from eventcore.keys import Keys
from eventcore.log import EventLog
from eventcore.server.target import client_options, redis_for
from history.backfill import backfill_export, prepare
from history.database import (
    Database,
    SqlUnavailable,
    check_schema,
    database_url,
    migrate,
    open_database,
)
from history.follower import SqlProjector
from history.queries import BUCKETS, BadQuery, TaskFilter, find_tasks, task_stats
from history.store import TrackingConflict
from history.verify import verify_history
from projections.points import parse_point
from projections.progress import Progress
from projections.runner import tune_gc
from projections.status import table

__all__ = ["add_commands"]


def add_commands(sub: Any) -> dict[str, Any]:
    s = sub.add_parser("sql", help="run the SQL projector: the task history in PostgreSQL/SQLite")
    _url(s, top=True)
    s.add_argument("--batch", type=int, help="log entries a transaction (default: sql.batch)")
    ssub = s.add_subparsers(dest="sql_command", metavar="WHAT")
    _url(ssub.add_parser("migrate", help="create or upgrade the tables, then stop"))
    _url(ssub.add_parser("verify", help="compare the tables with a fold of the log"))
    b = ssub.add_parser("backfill", help="fold an export file into the tables")
    b.add_argument("file", help="an `eventcore events export` file ('-' for stdin)")
    _url(b)
    r = ssub.add_parser("rebuild", help="empty the tables and fill them again from the log")
    r.add_argument("--yes", action="store_true", help="do not ask")
    _url(r)

    h = sub.add_parser("history", help="the task history in SQL: tasks, stats")
    hsub = h.add_subparsers(dest="history_command", required=True, metavar="WHAT")
    t = hsub.add_parser("tasks", help="tasks newest first, filtered")
    t.add_argument("--status", help="comma-separated statuses, e.g. failed,timed_out")
    t.add_argument("--kind")
    t.add_argument("--queue")
    t.add_argument("--node")
    t.add_argument("--tenant")
    t.add_argument("--error", metavar="TEXT", help="error text contains TEXT (any case)")
    _range(t)
    t.add_argument("--limit", type=int, default=50)
    t.add_argument("--cursor", help="the next page, as the previous page printed it")
    t.add_argument("--json", action="store_true")
    _url(t)
    st = hsub.add_parser("stats", help="throughput, failure rate and durations per bucket")
    st.add_argument("--bucket", choices=sorted(BUCKETS), default="hour")
    st.add_argument("--kind")
    st.add_argument("--queue")
    st.add_argument("--tenant")
    _range(st)
    st.add_argument("--json", action="store_true")
    _url(st)
    return {"sql": cmd_sql, "history": cmd_history}


def _url(p: argparse.ArgumentParser, *, top: bool = False) -> None:
    p.add_argument(
        "--url",
        default=None if top else argparse.SUPPRESS,
        help="database URL: postgresql://user:pw@host:port/db or sqlite:///path "
        "(default: sql.url, else history.sqlite3 in the data directory)",
    )


def _range(p: argparse.ArgumentParser) -> None:
    p.add_argument("--since", metavar="TIME", help="from this time (ISO-8601 or epoch seconds)")
    p.add_argument("--until", metavar="TIME", help="before this time")


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- eventcore sql ------------------------------------------------------------------


def cmd_sql(args: argparse.Namespace, settings: Settings) -> int:
    url = database_url(settings, args.url)
    command = args.sql_command
    if command == "migrate":
        with _database(url) as db:
            before, after = migrate(db)
        print(
            f"{db.name}: schema {after}"
            + (" (already)" if before == after else f" (was {before or 'empty'})")
        )
        return 0
    batch = args.batch or settings.sql.batch
    if command == "verify":
        return _with_log(settings, url, batch, _verify)
    if command == "backfill":
        return _with_log(settings, url, batch, lambda p: _backfill(p, args.file))
    if command == "rebuild":
        question = (
            f"empty every table of {_database_name(url)}? (history the log no longer "
            "holds comes back only from an export: `eventcore sql backfill FILE`)"
        )
        if not args.yes and not _confirm(question):
            _say("nothing changed")
            return 1
        return _with_log(settings, url, batch, _rebuild)
    return _with_log(settings, url, batch, _follow)


def _database_name(url: str) -> str:
    with _database(url) as db:
        return db.name


def _confirm(question: str) -> bool:
    if not sys.stdin.isatty():
        raise EventcoreError(f"{question} Give --yes to confirm without a terminal")
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


@contextmanager
def _database(url: str, *, writer: bool = True) -> Iterator[Database]:
    db = open_database(url, writer=writer)
    try:
        yield db
    finally:
        db.dispose()


def _with_log(
    settings: Settings, url: str, batch: int, fn: Callable[[SqlProjector], Awaitable[int]]
) -> int:
    async def main(redis_url: str) -> int:
        tune_gc()  # it folds batches as the Redis projector does (a quarter of its CPU else)
        redis = await connect(redis_url, client_options(settings))
        log = EventLog(redis, Keys(settings.namespace, settings.partitions))
        try:
            with _database(url) as db:
                return await fn(SqlProjector(log, db, batch=batch))
        except RedisError as exc:
            raise EventcoreError(f"Redis: {exc}") from None
        finally:
            await redis.aclose()

    with redis_for(settings) as target:
        return asyncio.run(main(target.url))


async def _follow(projector: SqlProjector) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if not await projector.start(stop, lambda: prepare(projector, say=_say)):
        return 0
    _say(f"sql: following the log into {projector.db.name}")
    await _catch_up(projector, stop)
    try:
        await projector.run(stop)
    finally:
        _say(f"sql stopped: {projector.applied} entries applied, {projector.skipped} skipped")
    return 0


async def _catch_up(projector: SqlProjector, stop: asyncio.Event) -> None:
    """Apply what the log already holds, with a progress line on a terminal.
    What :meth:`SqlProjector.run` waits out (the database away, another
    writer first) ends the catch-up and is left to it."""
    total = await _backlog(projector)
    if total < 10 * projector.batch:
        return
    with Progress("sql backfill", total=total) as bar:
        try:
            while not stop.is_set() and await projector.step(None):
                bar.update(projector.applied)
        except (SqlUnavailable, TrackingConflict) as exc:
            # run() waits these out and goes on from the positions.
            _say(f"sql backfill interrupted: {exc}")
            return
    _say(f"sql: caught up with the log ({projector.applied} entries)")


async def _backlog(projector: SqlProjector) -> int:
    """About how many entries lie after the positions (whole streams for a
    new database; XLEN is all Redis can tell cheaply)."""
    redis = projector.log.redis
    new = [s for s in projector.streams if s not in projector.tracked]
    return sum([await redis.xlen(s) for s in new])


async def _verify(projector: SqlProjector) -> int:
    with Progress("verifying", unit="entries") as bar:
        problems = await verify_history(projector, progress=bar.update)
    for line in problems:
        print(line)
    if problems:
        _say(f"{len(problems)} difference(s) between {projector.db.name} and the log")
        return 1
    _say(f"{projector.db.name} equals the log up to its tracking positions")
    return 0


async def _backfill(projector: SqlProjector, file: str) -> int:
    await projector.setup()
    path = None if file == "-" else Path(file)
    if path is not None and not path.is_file():
        raise EventcoreError(f"no such export file: {file}")
    source = sys.stdin.buffer if path is None else path.open("rb")
    try:
        with Progress("sql backfill") as bar:
            n = await backfill_export(projector, source, progress=bar.update)
    finally:
        if path is not None:
            source.close()
    print(f"{n} entries of {file} applied to {projector.db.name}")
    return 0


async def _rebuild(projector: SqlProjector) -> int:
    await projector.setup()
    await asyncio.to_thread(projector.store.clear)
    await prepare(projector, say=_say)
    stop = asyncio.Event()
    await _catch_up(projector, stop)
    while await projector.step(None):
        pass
    await projector.publish()
    print(f"{projector.db.name} filled again from the log: {projector.applied} entries")
    return 0


# -- eventcore history ----------------------------------------------------------------


def _time(value: str | None, option: str) -> float | None:
    if value is None:
        return None
    point = parse_point(value, option)
    if point.ms is None:
        raise EventcoreError(f"bad {option} value {value!r}: give a time, not an entry id")
    return point.ms / 1000


def cmd_history(args: argparse.Namespace, settings: Settings) -> int:
    url = database_url(settings, getattr(args, "url", None))
    f = TaskFilter(
        tenant=args.tenant,
        status=tuple(s for s in (getattr(args, "status", None) or "").split(",") if s),
        kind=args.kind,
        queue=args.queue,
        node=getattr(args, "node", None),
        since=_time(args.since, "--since"),
        until=_time(args.until, "--until"),
        error=getattr(args, "error", None),
    )
    with _database(url, writer=False) as db:
        check_schema(db)
        try:
            if args.history_command == "tasks":
                return _print_tasks(db, f, args)
            return _print_stats(db, f, args)
        except BadQuery as exc:
            raise EventcoreError(f"--{exc.field}: {exc.message}") from None


def _when(t: float | None) -> str | None:
    if t is None:
        return None
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _print_tasks(db: Database, f: TaskFilter, args: argparse.Namespace) -> int:
    page = find_tasks(db, f, limit=args.limit, cursor=args.cursor)
    if args.json:
        print(msgspec.json.encode(page).decode())
        return 0
    if not page.items:
        print("no tasks")
        return 0
    rows = [
        {
            "task": r["task_id"],
            "status": r["status"],
            "kind": r["kind"],
            "queue": r["queue"],
            "node": r["node"],
            "submitted": _when(r["submitted_at"]),
            "duration_s": None if r["duration_s"] is None else round(r["duration_s"], 3),
            "error": (r["error"] or "")[:60] or None,
        }
        for r in page.items
    ]
    print(table(rows))
    if page.next_cursor:
        print(f"more: --cursor {page.next_cursor}")
    return 0


def _print_stats(db: Database, f: TaskFilter, args: argparse.Namespace) -> int:
    rows = task_stats(db, f, bucket=args.bucket)
    if args.json:
        print(msgspec.json.encode({"bucket": args.bucket, "rows": rows}).decode())
        return 0
    if not rows:
        print("no tasks in that range")
        return 0

    def pct(v: float | None) -> str | None:
        return None if v is None else f"{v * 100:.1f}%"

    def secs(v: float | None) -> float | None:
        return None if v is None else round(v, 3)

    print(
        table(
            [
                {
                    "start": _when(r["start"]),
                    "kind": r["kind"],
                    "queue": r["queue"],
                    "submitted": r["submitted"],
                    "ended": r["ended"],
                    "failed": r["failed"],
                    "failure": pct(r["failure_rate"]),
                    "p50_s": secs(r["p50"]),
                    "p95_s": secs(r["p95"]),
                    "p99_s": secs(r["p99"]),
                }
                for r in rows
            ]
        )
    )
    return 0
