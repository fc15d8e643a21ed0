"""``eventcore web`` (serve the HTTP API) and ``eventcore token`` (the API
tokens it accepts, kept by :mod:`web.auth`)."""

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
from projections.status import table

__all__ = ["add_commands"]


def add_commands(sub: Any) -> dict[str, Any]:
    w = sub.add_parser(
        "web", help="serve the HTTP API, SSE feeds and the IOPaint-compatible routes"
    )
    w.add_argument("--host", help="address to listen on (default: web.host)")
    w.add_argument("--port", type=int, help="port (default: web.port; 0 picks a free one)")
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
    return {"web": cmd_web, "token": cmd_token}


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
