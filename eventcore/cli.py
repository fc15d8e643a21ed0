"""The ``eventcore`` command.

Every command loads the settings first, so a wrong value stops it at once
with the key named. Errors eventcore raises on purpose are printed as one
line (``eventcore: error: ...``) with exit status 2 for configuration and 1
for everything else; a traceback means a bug.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import logging
import signal
import socket
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from eventcore import _toml
from eventcore.config import Settings, load_settings, to_toml_dict
from eventcore.connection import ClientOptions, connect, redact
from eventcore.embedded import EmbeddedRedis
from eventcore.errors import ConfigError, EventcoreError
from eventcore.stack import Stack

__all__ = ["main"]

log = logging.getLogger("eventcore")


def client_options(settings: Settings) -> ClientOptions:
    r = settings.redis
    return ClientOptions(
        connect_timeout=r.connect_timeout,
        socket_timeout=r.socket_timeout,
        retry_attempts=r.retry_attempts,
        retry_backoff_base=r.retry_backoff_base,
        retry_backoff_cap=r.retry_backoff_cap,
        max_connections=r.max_connections,
        pool_timeout=r.pool_timeout,
    )


@dataclass
class RedisTarget:
    """Where the system's Redis is, and the embedded server if we run it."""

    url: str
    embedded: EmbeddedRedis | None


@contextlib.contextmanager
def redis_for(settings: Settings) -> Iterator[RedisTarget]:
    """The configured Redis, or an embedded one under ``redis.data_dir`` when
    no URL is set (stopped on exit if this process started it)."""
    if settings.redis.url:
        yield RedisTarget(settings.redis.url, None)
        return
    embedded = EmbeddedRedis(settings.redis.data_dir, settings.redis.durability)
    url = embedded.start()
    try:
        yield RedisTarget(url, embedded)
    finally:
        embedded.stop()


async def describe(url: str, settings: Settings) -> dict[str, str]:
    """What the server at ``url`` runs with: version, persistence, memory policy."""
    client = await connect(url, client_options(settings))
    try:
        info = await client.info("server")
        conf: dict[str, str] = {}
        for name in ("appendonly", "appendfsync", "maxmemory-policy"):
            with contextlib.suppress(Exception):  # CONFIG may be disabled on managed servers
                value = next(iter((await client.config_get(name)).values()), "?")
                conf[name] = value.decode() if isinstance(value, bytes) else str(value)
    finally:
        await client.aclose()
    version = info.get("valkey_version") or info.get("redis_version")
    flavor = "valkey" if "valkey_version" in info else "redis"
    return {"url": redact(url), "server": f"{flavor} {version}", **conf}


def wait_for_stop(embedded: EmbeddedRedis | None, stack: Stack | None = None) -> None:
    """Block until Ctrl-C or SIGTERM (or the embedded server or a role dies)."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):
        if embedded is not None and embedded.owned and not embedded.running:
            raise EventcoreError(f"the embedded Redis in {embedded.data_dir} exited")
        if stack is not None and (dead := stack.dead()):
            codes = ", ".join(f"{r.name} (exit {r.proc.returncode})" for r in dead)
            raise EventcoreError(f"a role exited: {codes}")


# -- commands ------------------------------------------------------------------


def memory_policy_warning(facts: dict[str, str]) -> str | None:
    """A warning when Redis may evict keys under memory pressure: an evicted
    stream entry or work entry is lost work. ``noeviction`` makes a full
    Redis refuse writes instead (the web app answers 507)."""
    policy = facts.get("maxmemory-policy")
    if policy in (None, "noeviction"):
        return None
    return (
        f"warning: Redis maxmemory-policy is {policy!r}: under memory pressure it may evict "
        "events and queued work; set it to 'noeviction'"
    )


def cmd_redis(args: argparse.Namespace, settings: Settings) -> int:
    if settings.redis.url:
        print(f"redis.url is set ({redact(settings.redis.url)}): no embedded server to run")
        return 0
    with redis_for(settings) as target:
        assert target.embedded is not None
        state = "started" if target.embedded.owned else "already running, reused"
        print(target.url, flush=True)
        print(
            f"embedded Redis {state} in {target.embedded.data_dir}; Ctrl-C stops it",
            file=sys.stderr,
            flush=True,
        )
        wait_for_stop(target.embedded)
    return 0


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    with redis_for(settings) as target:
        facts = asyncio.run(describe(target.url, settings))
        where = "embedded" if target.embedded else "external"
        print(f"eventcore is up. Redis ({where}): {target.url}", flush=True)
        print(
            f"  {facts.get('server')}, appendonly={facts.get('appendonly', '?')}, "
            f"appendfsync={facts.get('appendfsync', '?')}",
            flush=True,
        )
        if warning := memory_policy_warning(facts):
            print(warning, file=sys.stderr, flush=True)
        stack = Stack(target.url, args.config)
        try:
            stack.start("projector", "project")
            stack.start("worker", "worker", "--node", f"{socket.gethostname()}-cpu-1")
            stack.start("web", "web")
            web = settings.web
            print(
                f"  web: http://{web.host}:{web.port}  (API /v1, live feed /v1/stream, "
                "IOPaint-compatible /api/v1)",
                flush=True,
            )
            print("Ctrl-C stops it.", flush=True)
            wait_for_stop(target.embedded, stack)
        finally:
            stack.stop(settings.worker.shutdown_grace)
    print("eventcore stopped.", flush=True)
    return 0


def cmd_check(args: argparse.Namespace, settings: Settings) -> int:
    with redis_for(settings) as target:
        facts = asyncio.run(describe(target.url, settings))
    if args.json:
        print(json.dumps(facts))
    else:
        for key, value in facts.items():
            print(f"{key:>17}: {value}")
    if warning := memory_policy_warning(facts):
        print(warning, file=sys.stderr)
    want = {"durable": "always", "fast": "everysec"}[settings.redis.durability]
    if facts.get("appendonly") == "no" or facts.get("appendfsync") not in (want, None):
        print(
            f"warning: redis.durability is {settings.redis.durability!r} (AOF with "
            f"appendfsync {want}) but the server runs appendonly="
            f"{facts.get('appendonly')} appendfsync={facts.get('appendfsync')}",
            file=sys.stderr,
        )
    return 0


def cmd_config(args: argparse.Namespace, settings: Settings) -> int:
    data = to_toml_dict(settings)
    print(
        json.dumps(data, indent=2) if args.json else _toml.dumps(data),
        end="\n" if args.json else "",
    )
    return 0


# -- entry point -------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eventcore", description="Event-sourced tasks on Redis Streams."
    )
    parser.add_argument(
        "--config", metavar="FILE", help="TOML settings file (default: $EVENTCORE_CONFIG)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser(
        "up",
        help="run the system on this machine: Redis (embedded if REDIS_URL is unset), "
        "the web app, the projector and a CPU worker",
    )
    sub.add_parser("redis", help="run only the embedded Redis and print its URL")
    check = sub.add_parser("check", help="connect to Redis and show how it is set up")
    check.add_argument("--json", action="store_true")
    config = sub.add_parser("config", help="print the effective settings (TOML)")
    config.add_argument("--json", action="store_true")
    for module in ROLE_MODULES:
        COMMANDS.update(importlib.import_module(module).add_commands(sub))
    return parser


COMMANDS: dict[str, Any] = {
    "up": cmd_up,
    "redis": cmd_redis,
    "check": cmd_check,
    "config": cmd_config,
}
# The roles add their own commands. Named by string, imported when the parser
# is built, so the log package itself never imports a role.
ROLE_MODULES = ("workers.cli", "projections.cli", "web.cli")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        settings = load_settings(args.config)
        return COMMANDS[args.command](args, settings)
    except ConfigError as exc:
        print(f"eventcore: error: {exc}", file=sys.stderr)
        return 2
    except EventcoreError as exc:
        print(f"eventcore: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
