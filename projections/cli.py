"""``eventcore project``: run the projector."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any

from eventcore.cli import client_options, redis_for
from eventcore.config import Settings
from eventcore.connection import connect
from eventcore.keys import Keys
from eventcore.log import EventLog
from projections.runner import Projector
from projections.store import ViewStore, current_views
from projections.tools import describe, rebuild, tail, verify

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
    redis = await connect(url, client_options(settings))
    elog = EventLog(redis, Keys(settings.namespace, settings.partitions), group=settings.group)
    views = args.views or await current_views(elog)
    projector = Projector(
        elog, ViewStore(elog, views), batch=args.batch, follow_pointer=args.views is None
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"projector {projector.consumer}: views {views!r}", file=sys.stderr, flush=True)
    try:
        await projector.run(stop)
    finally:
        await redis.aclose()
        print(
            f"projector stopped: {projector.applied} entries applied, {projector.parked} parked",
            file=sys.stderr,
            flush=True,
        )


def add_tool_commands(sub: Any) -> dict[str, Any]:
    ev = sub.add_parser("events", help="read the log: history of a task, tail")
    evsub = ev.add_subparsers(dest="events_command", required=True, metavar="WHAT")
    h = evsub.add_parser("history", help="a task's timeline")
    h.add_argument("task")
    h.add_argument("--json", action="store_true")
    t = evsub.add_parser("tail", help="the log's events, in order; --follow for new ones")
    t.add_argument("--follow", "-f", action="store_true")
    t.add_argument("--task")
    t.add_argument("--kind", help="event type prefix, e.g. task.failed or node.")
    t.add_argument("--json", action="store_true")
    rp = sub.add_parser("replay", help="check the views against the log")
    rpsub = rp.add_subparsers(dest="replay_command", required=True, metavar="WHAT")
    v = rpsub.add_parser("verify", help="replay the log from zero and compare with the views")
    v.add_argument("--views", help="view namespace (default: the one in use)")
    rb = rpsub.add_parser("rebuild", help="fold the log into fresh views and switch to them")
    rb.add_argument("--batch", type=int, default=5000)
    return {"events": cmd_events, "replay": cmd_replay}


def cmd_events(args: argparse.Namespace, settings: Settings) -> int:
    with redis_for(settings) as target:
        return asyncio.run(_events(target.url, settings, args))


async def _events(url: str, settings: Settings, args: argparse.Namespace) -> int:
    redis = await connect(url, client_options(settings))
    elog = EventLog(redis, Keys(settings.namespace, settings.partitions))
    try:
        if args.events_command == "history":
            entries = await elog.history(args.task)
            if not entries:
                print(f"eventcore: no events for task {args.task}", file=sys.stderr)
                return 1
            for entry in entries:
                print(describe(entry, as_json=args.json), flush=True)
            return 0
        async for entry in tail(elog, follow=args.follow, task=args.task, kind=args.kind):
            print(describe(entry, as_json=args.json), flush=True)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        await redis.aclose()


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    with redis_for(settings) as target:
        if args.replay_command == "rebuild":
            return asyncio.run(_rebuild(target.url, settings, args.batch))
        return asyncio.run(_verify(target.url, settings, args.views))


async def _rebuild(url: str, settings: Settings, batch: int) -> int:
    redis = await connect(url, client_options(settings))
    elog = EventLog(redis, Keys(settings.namespace, settings.partitions))
    last = [0.0]

    def progress(done: int, seconds: float) -> None:
        if seconds - last[0] >= 0.5:
            last[0] = seconds
            rate = done / seconds if seconds else 0.0
            print(
                f"\rrebuilding: {done:,} entries, {rate:,.0f}/s",
                end="",
                file=sys.stderr,
                flush=True,
            )

    try:
        res = await rebuild(elog, batch=batch, progress=progress)
    finally:
        await redis.aclose()
    rate = res.entries / res.seconds if res.seconds else 0.0
    print(
        f"\rrebuilt {res.entries:,} entries in {res.seconds:.1f}s ({rate:,.0f}/s) into views "
        f"{res.views!r}; switched from {res.previous!r}",
        flush=True,
    )
    return 0


async def _verify(url: str, settings: Settings, views: str | None) -> int:
    redis = await connect(url, client_options(settings))
    elog = EventLog(redis, Keys(settings.namespace, settings.partitions))
    try:
        views = views or await current_views(elog)
        problems = await verify(elog, ViewStore(elog, views))
    finally:
        await redis.aclose()
    for line in problems[:50]:
        print(line)
    if problems:
        print(f"views {views!r} differ from a replay of the log in {len(problems)} places")
        return 1
    print(f"views {views!r} equal a replay of the log")
    return 0
