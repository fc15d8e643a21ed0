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
from projections.store import ViewStore

__all__ = ["add_commands"]


def add_commands(sub: Any) -> dict[str, Any]:
    p = sub.add_parser("project", help="run the projector: fold the log into the views")
    p.add_argument("--views", default="live", help="view namespace to write (default: live)")
    p.add_argument("--batch", type=int, default=1000, help="entries per batch")
    return {"project": cmd_project}


def cmd_project(args: argparse.Namespace, settings: Settings) -> int:
    with redis_for(settings) as target:
        asyncio.run(_run(target.url, settings, args))
    return 0


async def _run(url: str, settings: Settings, args: argparse.Namespace) -> None:
    redis = await connect(url, client_options(settings))
    elog = EventLog(redis, Keys(settings.namespace, settings.partitions), group=settings.group)
    projector = Projector(elog, ViewStore(elog, args.views), batch=args.batch)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"projector {projector.consumer}: views {args.views!r}", file=sys.stderr, flush=True)
    try:
        await projector.run(stop)
    finally:
        await redis.aclose()
        print(
            f"projector stopped: {projector.applied} entries applied, {projector.parked} parked",
            file=sys.stderr,
            flush=True,
        )
