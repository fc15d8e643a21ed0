"""``eventcore web`` (serve the HTTP API), ``eventcore status`` (queues, nodes
and pending work as a table) and ``eventcore token`` (API tokens)."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

from eventcore.config import Settings
from eventcore.connection import connect
from eventcore.errors import EventcoreError
from eventcore.keys import Keys
from eventcore.log import EventLog
from eventcore.server.target import client_options, redis_for

__all__ = ["add_commands"]


def add_commands(sub: Any) -> dict[str, Any]:
    w = sub.add_parser(
        "web", help="serve the HTTP API, SSE feeds and the IOPaint-compatible routes"
    )
    w.add_argument("--host", help="address to listen on (default: web.host)")
    w.add_argument("--port", type=int, help="port (default: web.port; 0 picks a free one)")
    s = sub.add_parser("status", help="queues, nodes and pending entries as a table")
    s.add_argument("--json", action="store_true")
    t = sub.add_parser("token", help="API tokens (used when web.auth is on)")
    tsub = t.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    c = tsub.add_parser("create", help="create a token and print it (shown once)")
    c.add_argument("name")
    c.add_argument("--tenant", default="", help="tenant the token acts for")
    c.add_argument(
        "--scopes",
        default="submit,read,stream",
        help="comma-separated: submit, read, stream, admin",
    )
    tsub.add_parser("list", help="list tokens (names, tenants, scopes; never the tokens)")
    r = tsub.add_parser("revoke", help="revoke every token with this name")
    r.add_argument("name")
    return {"web": cmd_web, "status": cmd_status, "token": cmd_token}


def cmd_web(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from web.app import create_app

    host = args.host or settings.web.host
    port = settings.web.port if args.port is None else args.port
    with redis_for(settings) as target:
        app = create_app(settings, target.url)
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            lifespan="on",
            timeout_graceful_shutdown=5,
        )
        server = uvicorn.Server(config)

        async def serve() -> None:
            task = asyncio.create_task(server.serve())
            while not server.started and not task.done():
                await asyncio.sleep(0.05)
            if server.started:
                for s in server.servers:
                    for sock in s.sockets:
                        h, p = sock.getsockname()[:2]
                        print(f"web: listening on http://{h}:{p}", flush=True)
            await task

        asyncio.run(serve())
    return 0


async def _log(url: str, settings: Settings) -> EventLog:
    redis = await connect(url, client_options(settings))
    return EventLog(redis, Keys(settings.namespace, settings.partitions), group=settings.group)


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    with redis_for(settings) as target:
        return asyncio.run(_status(target.url, settings, args.json))


async def _status(url: str, settings: Settings, as_json: bool) -> int:
    import json

    from eventcore.routing import backlog
    from projections.read import read_queue_health
    from projections.store import ViewStore, current_views

    log = await _log(url, settings)
    try:
        store = ViewStore(log, await current_views(log))
        queues = await store.queues()
        nodes = await store.nodes()
        names = [q.name for q in settings.queues]
        waiting = await backlog(log, names)
        pending = await _pending(log, names, settings.group)
        marks = await store.watermark()
        health = await read_queue_health(
            log, names, queues, silent_for=settings.worker.heartbeat_timeout
        )
    finally:
        await log.redis.aclose()
    now = time.time()
    qrows = []
    for name, h in health.items():
        v = queues.get(name)
        qrows.append(
            {
                "queue": name,
                "entries": waiting.get(name, 0),
                "pending": pending.get(name, 0),
                "waiting": v.waiting if v else 0,
                "in_flight": v.in_flight if v else 0,
                "succeeded": v.succeeded if v else 0,
                "failed": (v.failed + v.timed_out + v.dead_lettered) if v else 0,
                "oldest_wait_s": round(now - v.oldest_waiting_at, 1)
                if v and v.oldest_waiting_at
                else None,
                "consumers": h.consumers,
            }
        )
    nrows = [
        {
            "node": n.node,
            "state": n.state,
            "queues": ",".join(n.queues),
            "running": len(n.running),
            "slots": n.concurrency,
            "processed": n.processed,
            "failed": n.failed,
            "heartbeat_s_ago": round(now - n.last_heartbeat, 1) if n.last_heartbeat else None,
        }
        for n in sorted(nodes.values(), key=lambda n: n.node)
    ]
    warnings = {name: h.warning for name, h in health.items() if h.warning}
    if as_json:
        for row in qrows:
            row["warning"] = warnings.get(row["queue"])
        print(json.dumps({"queues": qrows, "nodes": nrows, "watermark": marks}, indent=2))
        return 0
    print(table(qrows) if qrows else "no queues")
    for name, warning in warnings.items():
        print(f"warning: queue {name}: {warning}")
    print()
    print(table(nrows) if nrows else "no nodes have announced themselves yet")
    return 0


async def _pending(log: EventLog, queues: list[str], group: str) -> dict[str, int]:
    """Entries delivered to a worker and not yet acked, per queue."""
    from eventcore.events.task import PRIORITIES_HIGH_FIRST

    k = log.keys
    out = dict.fromkeys(queues, 0)
    for q in queues:
        for p in k.all_partitions():
            for prio in PRIORITIES_HIGH_FIRST:
                try:
                    info = await log.redis.xpending(k.work(p, q, prio), group)
                except Exception:  # no such stream or group yet
                    continue
                out[q] += int(info.get("pending", 0) if isinstance(info, dict) else 0)
    return out


def table(rows: list[dict[str, Any]]) -> str:
    """Rows as an aligned text table (numbers right-aligned, missing as '-')."""
    cols = list(rows[0])
    cells = [[("-" if r[c] is None else str(r[c])) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    numeric = [all(isinstance(r[c], int | float) or r[c] is None for r in rows) for c in cols]

    def line(values: list[str]) -> str:
        return "  ".join(
            v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)
        ).rstrip()

    return "\n".join([line(cols), line(["-" * w for w in widths]), *map(line, cells)])


def cmd_token(args: argparse.Namespace, settings: Settings) -> int:
    with redis_for(settings) as target:
        return asyncio.run(_token(target.url, settings, args))


async def _token(url: str, settings: Settings, args: argparse.Namespace) -> int:
    import msgspec

    from web.auth import TokenInfo, create_token, revoke_token

    log = await _log(url, settings)
    try:
        if args.token_command == "create":
            scopes = tuple(s.strip() for s in args.scopes.split(",") if s.strip())
            try:
                token = await create_token(log, args.name, args.tenant, scopes)
            except ValueError as exc:
                raise EventcoreError(f"--scopes: {exc}") from None
            print(token)
            print("keep it: only its SHA-256 is stored", file=sys.stderr)
        elif args.token_command == "list":
            raw = await log.redis.hgetall(log.keys.api_tokens())
            infos = sorted(
                (msgspec.json.decode(v, type=TokenInfo) for v in raw.values()),
                key=lambda i: (i.name, i.created_at),
            )
            rows = [
                {
                    "name": i.name,
                    "tenant": i.tenant,
                    "scopes": ",".join(i.scopes),
                    "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(i.created_at)),
                }
                for i in infos
            ]
            print(table(rows) if rows else "no tokens")
        else:
            gone = await revoke_token(log, args.name)
            if not gone:
                raise EventcoreError(f"no token named {args.name!r}")
            print(f"revoked {gone} token(s) named {args.name!r}")
    finally:
        await log.redis.aclose()
    return 0
