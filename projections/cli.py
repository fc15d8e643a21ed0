"""``eventcore project`` (run the projector) and the tools over the log and
the views: ``events history|tail|export|import|trim``,
``replay verify|rebuild|snapshot``, ``as-of`` and ``status``.

Errors a person can fix (a bad ``--at``, an unknown task, a line of an import
file that does not parse) are raised as :class:`EventcoreError` and printed
by ``eventcore.cli`` as one line; long operations draw a progress line on
stderr when it is a terminal (:mod:`projections.progress`)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import IO, Any

import msgspec
from redis.exceptions import RedisError

from eventcore.config import Settings
from eventcore.connection import connect
from eventcore.errors import EventcoreError
from eventcore.events import TaskSubmitted
from eventcore.ids import is_task_id
from eventcore.keys import Keys
from eventcore.log import EventLog
from eventcore.log.migrate import rename_legacy_keys
from eventcore.server.target import client_options, redis_for
from projections import status
from projections.asof import task_as_of, views_as_of
from projections.export import export_log, export_streams, import_log
from projections.points import parse_point
from projections.pool import ProjectorPool
from projections.progress import Progress
from projections.replay import Views
from projections.retention import Retention
from projections.runner import tune_gc
from projections.snapshot import log_trimmed, take_snapshot
from projections.store import ShardStore, ViewStore, current_views
from projections.tools import (
    ViewsMoved,
    describe,
    rebuild,
    seed_shard,
    starting_snapshot,
    tail,
    verify_at,
)
from projections.trim import trim_log, trim_marks

__all__ = ["add_commands"]


def add_commands(sub: Any) -> dict[str, Any]:
    p = sub.add_parser("project", help="run the projector: fold the log into the views")
    p.add_argument(
        "--views", help="view namespace to write (default: the one in use, following rebuilds)"
    )
    p.add_argument("--batch", type=int, default=1000, help="entries per batch")
    return {"project": cmd_project, **add_tool_commands(sub)}


def cmd_project(args: argparse.Namespace, settings: Settings) -> int:
    with redis_for(settings) as target:
        asyncio.run(_run(target.url, settings, args))
    return 0


async def _run(url: str, settings: Settings, args: argparse.Namespace) -> None:
    tune_gc()
    redis = await connect(url, client_options(settings))
    log = EventLog(redis, Keys(settings.namespace, settings.partitions), group=settings.group)
    head = await starting_snapshot(log)

    async def seed(store: ShardStore) -> None:
        # Empty views over a log trimmed behind a snapshot: start from the
        # snapshot, or the views would silently lack the trimmed tasks.
        if head is None or await store.watermark():
            return
        if head.entries and not head.parts and not await log_trimmed(log):
            return  # a snapshot from before view shards: the whole log is there to fold
        seeded = await seed_shard(log, store, head)
        _say(
            f"views {store.ns!r} shard {store.shard} seeded from the latest snapshot "
            f"({seeded} tasks)",
            err=True,
        )

    pool = ProjectorPool(
        log,
        views=args.views,
        batch=args.batch,
        lease_ms=settings.projector.lease_ms,
        on_take=seed,
        retention=Retention(
            views=settings.views.retention,
            sweep_every=settings.views.sweep_every,
            log=settings.log.retention,
            snapshot_every=settings.log.snapshot_every,
        ),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    views = args.views or await current_views(log)
    following = "" if args.views else " (following rebuilds)"
    _say(
        f"projector {pool.name}: views {views!r}{following}, "
        f"{len(pool.shards)} shards shared with any other projector",
        err=True,
    )
    try:
        await pool.run(stop)
    finally:
        await redis.aclose()
        _say(
            f"projector stopped: {pool.applied} entries applied, {pool.parked} parked",
            err=True,
        )


def add_tool_commands(sub: Any) -> dict[str, Any]:
    ev = sub.add_parser("events", help="read the log: history, tail, export, import, trim, migrate")
    evsub = ev.add_subparsers(dest="events_command", required=True, metavar="WHAT")
    h = evsub.add_parser("history", help="a task's timeline")
    h.add_argument("task")
    h.add_argument("--json", action="store_true")
    t = evsub.add_parser("tail", help="the log's events, in order; --follow for new ones")
    t.add_argument("--follow", "-f", action="store_true")
    t.add_argument("--task")
    t.add_argument("--kind", help="event type prefix, e.g. task.failed or node.")
    t.add_argument("--json", action="store_true")
    x = evsub.add_parser(
        "export", help="write the log as JSON Lines, one entry a line (stdout by default)"
    )
    x.add_argument("--since", metavar="TIME|ID", help="first entry: a time or an entry id")
    x.add_argument("--until", metavar="TIME|ID", help="last entry: a time or an entry id")
    x.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    i = evsub.add_parser(
        "import", help="append an export to this log, keeping entry ids (idempotent)"
    )
    i.add_argument("file", metavar="FILE", help="the export file, or - for stdin")
    tr = evsub.add_parser(
        "trim",
        help="remove log entries behind the latest snapshot, never ones a consumer "
        "group has not read or acked",
    )
    tr.add_argument(
        "--before",
        metavar="TIME|ID",
        help="trim only entries before this point too (keep recent history readable)",
    )
    tr.add_argument(
        "--keep-done",
        action="store_true",
        help="keep the recorded outcome of tasks whose events are trimmed",
    )
    evsub.add_parser(
        "migrate",
        help="rename keys from before node, control and web keys had hash tags "
        "(once, on a single server, with the stack stopped; idempotent)",
    )
    rp = sub.add_parser("replay", help="check, rebuild and snapshot the views")
    rpsub = rp.add_subparsers(dest="replay_command", required=True, metavar="WHAT")
    v = rpsub.add_parser("verify", help="replay the log and compare with the views")
    v.add_argument("--views", help="view namespace (default: the one in use)")
    v.add_argument(
        "--shard",
        action="append",
        metavar="SHARD",
        help="verify only this view shard (a partition number, or n for the node "
        "shard); repeat for several (default: every shard)",
    )
    rb = rpsub.add_parser("rebuild", help="fold the log into fresh views and switch to them")
    rb.add_argument("--batch", type=int, default=20_000)
    sn = rpsub.add_parser(
        "snapshot", help="store the views and their watermark; rebuild, verify and trim start there"
    )
    sn.add_argument("--batch", type=int, default=5000)
    a = sub.add_parser(
        "as-of", help="the views as they were at a time or entry id (JSON on stdout)"
    )
    a.add_argument("task", nargs="?", help="a task id: show its view")
    which = a.add_mutually_exclusive_group()
    which.add_argument("--nodes", action="store_true", help="the node views")
    which.add_argument("--queues", action="store_true", help="the queue views")
    which.add_argument("--stats", action="store_true", help="the stats, global and per queue/kind")
    a.add_argument(
        "--at",
        required=True,
        metavar="TIME|ID",
        help="ISO-8601 time (UTC when no offset), seconds since the epoch, or an entry id",
    )
    s = sub.add_parser("status", help="queues, nodes and pending entries as a table")
    s.add_argument("--json", action="store_true")
    return {
        "events": cmd_events,
        "replay": cmd_replay,
        "as-of": cmd_as_of,
        "status": status.cmd_status,
    }


# -- plumbing ------------------------------------------------------------------------


def _tool(settings: Settings, fn: Callable[[EventLog], Awaitable[int]]) -> int:
    """Run ``fn`` with the deployment's log; Redis errors become one line."""

    async def main(url: str) -> int:
        tune_gc()
        redis = await connect(url, client_options(settings))
        log = EventLog(redis, Keys(settings.namespace, settings.partitions))
        try:
            return await fn(log)
        except RedisError as exc:
            raise EventcoreError(f"Redis: {exc}") from None
        finally:
            await redis.aclose()

    with redis_for(settings) as target:
        return asyncio.run(main(target.url))


def _say(text: str, *, err: bool = False) -> None:
    print(text, file=sys.stderr if err else sys.stdout, flush=True)


def _to_json(value: Any) -> str:
    return json.dumps(msgspec.to_builtins(value), indent=2, sort_keys=False)


# -- events ----------------------------------------------------------------------------


def cmd_events(args: argparse.Namespace, settings: Settings) -> int:
    match args.events_command:
        case "export":
            since = parse_point(args.since, "--since") if args.since else None
            until = parse_point(args.until, "--until") if args.until else None

            async def run(log: EventLog) -> int:
                with _output(args.output) as out:
                    await _export(log, out, since, until)
                return 0

            return _tool(settings, run)
        case "import":
            return _tool(settings, lambda log: _import(log, args.file))
        case "trim":
            before = parse_point(args.before, "--before").start_id if args.before else None
            return _tool(settings, lambda log: _trim(log, keep_done=args.keep_done, before=before))
        case "history":
            return _tool(settings, lambda log: _history(log, args.task, as_json=args.json))
        case "migrate":
            return _tool(settings, _migrate)
    return _tool(settings, lambda log: _tail(log, args))


async def _migrate(log: EventLog) -> int:
    done = await rename_legacy_keys(log.redis, log.keys)
    for old, new in done.renamed:
        _say(f"renamed {old} -> {new}")
    for old, new in done.kept:
        _say(f"kept {old}: {new} already holds data; move what you need by hand", err=True)
    if done.dropped:
        _say(
            f"dropped {len(done.dropped)} keys of views kept in one slot: "
            "the projector folds the log into view shards again"
        )
    _say(f"migrate: {len(done.renamed)} renamed, {len(done.kept)} kept")
    return 1 if done.kept else 0


async def _history(log: EventLog, task_id: str, *, as_json: bool) -> int:
    if not is_task_id(task_id):
        raise EventcoreError(f"no task {task_id!r}: task ids are UUIDv7s")
    entries = await log.history(task_id)
    if not entries:
        raise EventcoreError(f"no events for task {task_id}")
    if not isinstance(entries[0].event, TaskSubmitted) and await trim_marks(log):
        _say("note: the start of this task's history was trimmed", err=True)
    for entry in entries:
        print(describe(entry, as_json=as_json), flush=True)
    return 0


async def _tail(log: EventLog, args: argparse.Namespace) -> int:
    try:
        async for entry in tail(log, follow=args.follow, task=args.task, kind=args.kind):
            print(describe(entry, as_json=args.json), flush=True)
    except KeyboardInterrupt:
        pass
    return 0


@contextlib.contextmanager
def _output(path: str | None) -> Iterator[IO[bytes]]:
    """stdout, or a file written beside its name and moved into place when
    complete, so a failed export never leaves a half file under that name."""
    if path is None or path == "-":
        try:
            yield sys.stdout.buffer
            sys.stdout.buffer.flush()
        except BrokenPipeError:
            # The reader went away (| head): stop quietly, as cat does.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return
    final = Path(path)
    partial = final.with_name(final.name + ".partial")
    try:
        out = partial.open("wb")
    except OSError as exc:
        raise EventcoreError(f"cannot write {partial}: {exc.strerror}") from None
    try:
        with out:
            yield out
        partial.replace(final)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


async def _export(log: EventLog, out: IO[bytes], since: Any, until: Any) -> int:
    total = None
    if since is None and until is None:
        streams = await export_streams(log)
        async with log.redis.pipeline(transaction=False) as pipe:
            for stream in streams:
                pipe.xlen(stream)
            total = sum(await pipe.execute())
    with Progress("exporting", total=total) as bar:
        res = await export_log(log, out, since=since, until=until, progress=bar.update)
    _say(
        f"exported {res.entries:,} entries of {res.streams} streams in {bar.elapsed:.1f}s"
        + (f" ({res.raw:,} with raw fields, {res.undecodable:,} undecodable)" if res.raw else ""),
        err=True,
    )
    return 0


async def _import(log: EventLog, path: str) -> int:
    if path == "-":
        source: IO[bytes] = sys.stdin.buffer
        size = None
    else:
        try:
            source = open(path, "rb")
            size = os.fstat(source.fileno()).st_size
        except OSError as exc:
            raise EventcoreError(f"cannot read {path}: {exc.strerror}") from None
    try:
        with Progress("importing", unit="lines") as bar:

            def progress(lines: int, read: int) -> None:
                bar.update(lines, fraction=read / size if size else None)

            res = await import_log(log, source, progress=progress)
    finally:
        if source is not sys.stdin.buffer:
            source.close()
    _say(
        f"imported {path}: {res.added:,} entries added, {res.present:,} already there, "
        f"{res.trimmed:,} below the trim mark ({res.lines:,} lines, {bar.elapsed:.1f}s)"
    )
    return 0


async def _trim(log: EventLog, *, keep_done: bool, before: str | None) -> int:
    res = await trim_log(log, prune=not keep_done, before=before)
    for s in res.streams:
        why = f" (held back by group {s.held_by!r})" if s.held_by else ""
        _say(f"{s.stream}: {s.trimmed:,} entries trimmed, kept from {s.minid}{why}")
    if not keep_done:
        _say(f"done: forgot the outcome of {res.done_pruned:,} tasks whose events were all trimmed")
    return 0


# -- replay ----------------------------------------------------------------------------


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    match args.replay_command:
        case "rebuild":
            return _tool(settings, lambda log: _rebuild(log, args.batch))
        case "snapshot":
            return _tool(settings, lambda log: _snapshot(log, args.batch))
    retention = settings.views.retention
    return _tool(settings, lambda log: _verify(log, args.views, args.shard, retention))


async def _rebuild(log: EventLog, batch: int) -> int:
    with Progress("rebuilding") as bar:
        res = await rebuild(log, batch=batch, progress=lambda done, _s: bar.update(done))
    rate = res.entries / res.seconds if res.seconds else 0.0
    base = f" on top of snapshot {res.snapshot} ({res.seeded:,} task views)" if res.snapshot else ""
    _say(
        f"rebuilt {res.entries:,} entries{base} in {res.seconds:.1f}s ({rate:,.0f}/s) into "
        f"views {res.views!r}; switched from {res.previous!r}"
    )
    return 0


async def _verify(
    log: EventLog, views: str | None, shards: list[str] | None = None, retention: float = 0.0
) -> int:
    for shard in shards or ():
        if shard not in log.keys.view_shards():
            there = ", ".join(log.keys.view_shards())
            raise EventcoreError(f"--shard {shard!r}: no such view shard (there are {there})")
    for tries_left in (2, 1, 0):
        name = views or await current_views(log)
        try:
            with Progress("verifying") as bar:
                res = await verify_at(
                    log,
                    ViewStore(log, name),
                    progress=bar.update,
                    shards=shards,
                    retention=retention,
                )
        except ViewsMoved:
            if views is not None or tries_left == 0:
                raise
            continue
        # A rebuild that switched to new views meanwhile may have dropped these
        # while they were read: verify the views now in use instead.
        if views is None and tries_left and await current_views(log) != name:
            continue
        break
    for line in res.problems[:50]:
        print(line)
    if res.problems:
        print(f"views {name!r} differ from a replay of the log in {len(res.problems)} places")
        return 1
    which = f" (shards {', '.join(shards)})" if shards else ""
    print(f"views {name!r}{which} equal a replay of the log up to their watermark")
    if res.behind:
        more = "over 10,000" if res.behind > 10_000 else f"{res.behind:,}"
        _say(f"note: {more} newer log entries are not in the views yet", err=True)
    return 0


async def _snapshot(log: EventLog, batch: int) -> int:
    t0 = time.monotonic()
    with Progress("snapshot") as bar:
        head = await take_snapshot(log, batch=batch, progress=bar.update)
    marks = ", ".join(f"{k} {v}" for k, v in head.watermark.items()) or "empty log"
    _say(
        f"snapshot {head.id}: {head.tasks:,} task views, {bar.done:,} new entries folded in "
        f"{time.monotonic() - t0:.1f}s; watermark {marks}"
    )
    if head.undecodable:
        _say(f"note: {head.undecodable:,} entries do not decode and are in no view", err=True)
    return 0


# -- as-of -------------------------------------------------------------------------------


def cmd_as_of(args: argparse.Namespace, settings: Settings) -> int:
    point = parse_point(args.at)
    if bool(args.task) == (args.nodes or args.queues or args.stats):
        raise EventcoreError("as-of: give a task id, or one of --nodes, --queues, --stats")

    async def run(log: EventLog) -> int:
        if args.task:
            print(_to_json(await task_as_of(log, args.task, point)))
            return 0
        with Progress("folding") as bar:
            views = await views_as_of(log, point, progress=bar.update)
        print(_to_json(_part(views, args)))
        return 0

    return _tool(settings, run)


def _part(views: Views, args: argparse.Namespace) -> Any:
    if args.nodes:
        return views.nodes
    if args.queues:
        return views.queues
    return {
        "global": views.stats,
        "by_queue_kind": [
            {"queue": q, "kind": k, "stats": v} for (q, k), v in sorted(views.stats_by.items())
        ],
    }


# -- status ----------------------------------------------------------------------------
