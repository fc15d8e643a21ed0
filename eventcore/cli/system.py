"""Commands about the system itself: ``up`` (run every role on this
machine), ``redis`` (only the embedded server), ``check`` (how the server is
set up) and ``config`` (the effective settings)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from redis.asyncio.cluster import RedisCluster

from eventcore.cli import toml as _toml
from eventcore.cli.stack import Stack, probe_ready
from eventcore.codec import text
from eventcore.config import Settings, to_toml_dict
from eventcore.connection import ClientOptions, cluster_facts, connect, redact
from eventcore.errors import EventcoreError
from eventcore.server.access import AccessError, TlsFiles, join_line, parse_listen
from eventcore.server.cluster import SLOTS, LocalCluster
from eventcore.server.embedded import EmbeddedRedis
from eventcore.server.process import free_port
from eventcore.server.target import client_options, redis_for

__all__ = ["add_commands"]


def add_commands(sub: Any) -> dict[str, Any]:
    up = sub.add_parser(
        "up",
        help="run the system on this machine: Redis (embedded if REDIS_URL is unset), "
        "the web app, the projector and CPU workers; a role that exits is restarted",
    )
    up.add_argument("--host", help="address the web app listens on (default: web.host)")
    up.add_argument(
        "--port", type=int, help="port of the web app (default: web.port; 0 picks a free one)"
    )
    up.add_argument(
        "--workers", type=count, default=1, metavar="N", help="CPU worker processes (default 1)"
    )
    up.add_argument(
        "--concurrency",
        type=count,
        metavar="N",
        help="tasks at once per worker (default: worker.concurrency, else one per core)",
    )
    up.add_argument(
        "--ready-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="say what is missing if /readyz is not 200 by then (default 60)",
    )
    up.add_argument(
        "--no-sql",
        action="store_true",
        help="do not run the SQL projector (the task history in sql.url)",
    )
    add_listen_options(up)
    redis = sub.add_parser("redis", help="run only the embedded Redis and print its URL")
    add_listen_options(redis)
    redis.add_argument(
        "--cluster",
        type=count,
        metavar="N",
        help="run a local Redis Cluster of N masters instead (for development; "
        "data is kept in a temporary directory and removed on exit)",
    )
    check = sub.add_parser("check", help="connect to Redis and show how it is set up")
    check.add_argument("--json", action="store_true")
    config = sub.add_parser("config", help="print the effective settings (TOML)")
    config.add_argument("--json", action="store_true")
    return {"up": cmd_up, "redis": cmd_redis, "check": cmd_check, "config": cmd_config}


def add_listen_options(parser: argparse.ArgumentParser) -> None:
    """``--listen`` and its TLS and password options, for ``up`` and ``redis``."""
    g = parser.add_argument_group("serving the embedded Redis to other machines")
    g.add_argument(
        "--listen",
        type=listen_address,
        metavar="HOST:PORT",
        help="also listen on TCP there (e.g. 0.0.0.0:6380), with a generated password "
        "(user 'eventcore', kept in the data directory); prints the line to run elsewhere",
    )
    g.add_argument("--tls-cert", metavar="FILE", help="serve TCP with TLS: the certificate (PEM)")
    g.add_argument("--tls-key", metavar="FILE", help="the certificate's private key (PEM)")
    g.add_argument(
        "--tls-ca", metavar="FILE", help="the CA that signed the certificate, when it is private"
    )
    g.add_argument(
        "--no-password",
        action="store_true",
        help="listen without a password; refused unless HOST is a loopback address",
    )


def listen_address(text: str) -> Any:
    """``--listen``'s HOST:PORT."""
    try:
        return parse_listen(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def listen_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``listen``, ``tls`` and ``password`` arguments of
    :func:`~eventcore.server.target.redis_for`, checked together."""
    if (args.tls_cert is None) != (args.tls_key is None):
        raise AccessError("--tls-cert and --tls-key go together")
    if args.tls_ca is not None and args.tls_cert is None:
        raise AccessError("--tls-ca needs --tls-cert and --tls-key")
    if args.listen is None and (args.tls_cert is not None or args.no_password):
        raise AccessError("--tls-cert and --no-password need --listen HOST:PORT")
    tls = None
    if args.tls_cert is not None:
        ca = Path(args.tls_ca).resolve() if args.tls_ca else None
        tls = TlsFiles(Path(args.tls_cert).resolve(), Path(args.tls_key).resolve(), ca)
    return {"listen": args.listen, "tls": tls, "password": not args.no_password}


def join_lines(embedded: EmbeddedRedis | None) -> list[str]:
    """What to tell the user about joining from another machine (nothing
    without a listen address)."""
    if embedded is None or embedded.remote_url is None:
        return []
    lines = [
        f"Redis also listens on {embedded.listening}. On another machine, run:",
        f"  {join_line(embedded.remote_url)}",
    ]
    if embedded.tls is not None and embedded.tls.ca is not None:
        lines.append(f"  (with a copy of {embedded.tls.ca.resolve()} at the same path there)")
    return lines


def count(text: str) -> int:
    """A whole number of at least 1, for ``--workers`` and ``--concurrency``."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


async def describe(url: str, settings: Settings) -> dict[str, str]:
    """What the server at ``url`` runs with: version, persistence, memory policy;
    on a Redis Cluster also its state, slots and masters (the server facts are
    the seed node's)."""
    options = client_options(settings)
    client = await connect(url, options)
    cluster: dict[str, str] = {}
    try:
        if isinstance(client, RedisCluster):
            cluster = await _cluster_lines(url, options)
            # One node answers for the server facts; asked of every node, redis-py
            # would return them keyed by node.
            on: dict[str, Any] = {"target_nodes": client.get_default_node()}
        else:
            on = {}
        info = await client.info("server", **on)
        conf: dict[str, str] = {}
        for name in ("appendonly", "appendfsync", "maxmemory-policy"):
            with contextlib.suppress(Exception):  # CONFIG may be disabled on managed servers
                value = next(iter((await client.config_get(name, **on)).values()), "?")
                conf[name] = text(value)
    finally:
        await client.aclose()
    version = info.get("valkey_version") or info.get("redis_version")
    flavor = "valkey" if "valkey_version" in info else "redis"
    return {"url": redact(url), "server": f"{flavor} {version}", **conf, **cluster}


async def _cluster_lines(url: str, options: ClientOptions) -> dict[str, str]:
    facts = await cluster_facts(url, options)
    return {
        "cluster_state": facts.state,
        "cluster_slots": f"{facts.slots_ok} of {SLOTS} served",
        "cluster_masters": f"{len(facts.masters)} ({', '.join(facts.masters)})",
    }


def stop_on_signals() -> threading.Event:
    """An event set by Ctrl-C or SIGTERM (instead of raising or dying), so a
    stop asked for at any moment still stops the roles and Redis in order."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def wait_for_stop(
    stop: threading.Event, embedded: EmbeddedRedis | None, stack: Stack | None = None
) -> None:
    """Block until ``stop`` is set, restarting roles of ``stack`` that exit.

    The embedded Redis dying is the one thing not restarted: every role
    depends on it, so it ends ``up`` with an error naming the server's log.
    """
    while not stop.wait(0.2):
        if embedded is not None and embedded.owned and not embedded.running:
            raise EventcoreError(
                f"the embedded Redis in {embedded.data_dir} exited (its log: "
                f"{embedded.log_path}); every role needs it, so eventcore stops"
            )
        if stack is not None:
            stack.supervise()


def announce_when_ready(
    ready_url: str, lines: Sequence[str], stop: threading.Event, timeout: float
) -> None:
    """Print ``lines`` (the web address) once ``ready_url`` answers 200, so the
    address is never shown before a request to it can be served. Past
    ``timeout`` seconds, say what is missing, again whenever that changes,
    and keep waiting."""
    started = time.monotonic()
    told = None
    while not stop.is_set():
        seen = probe_ready(ready_url)
        if seen.ready:
            if told is not None:
                print("eventcore is ready now.", file=sys.stderr, flush=True)
            for line in lines:
                print(line, flush=True)
            return
        waited = time.monotonic() - started
        if waited > timeout and seen.detail != told:
            print(
                f"eventcore: not ready after {waited:.0f}s: {seen.detail} ({ready_url}); "
                "the roles keep running, the address is shown once it is ready",
                file=sys.stderr,
                flush=True,
            )
            told = seen.detail
        stop.wait(0.25)


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
    if args.cluster:
        return run_local_cluster(args.cluster)
    if settings.redis.url:
        if args.listen is not None:
            raise AccessError(
                "--listen opens the embedded Redis to other machines, but redis.url "
                "(REDIS_URL) is set: that server is reached as it is; unset it to use --listen"
            )
        print(f"redis.url is set ({redact(settings.redis.url)}): no embedded server to run")
        return 0
    access = listen_options(args)
    stop = stop_on_signals()
    with redis_for(settings, start=True, **access) as target:
        assert target.embedded is not None
        state = "started" if target.embedded.owned else "already running, reused"
        print(target.url, flush=True)
        for line in join_lines(target.embedded):
            print(line, flush=True)
        print(
            f"embedded Redis {state} in {target.embedded.data_dir}; Ctrl-C stops it",
            file=sys.stderr,
            flush=True,
        )
        wait_for_stop(stop, target.embedded)
    return 0


def run_local_cluster(masters: int) -> int:
    """``eventcore redis --cluster N``: a local cluster until Ctrl-C, its seed URL on stdout."""
    stop = stop_on_signals()
    where = tempfile.mkdtemp(prefix="eventcore-cluster-")
    try:
        with LocalCluster(Path(where), masters) as cluster:
            print(cluster.url, flush=True)
            nodes = ", ".join(f"127.0.0.1:{node.port}" for node in cluster.nodes)
            print(
                f"local Redis Cluster of {masters} masters ({nodes}) in {where}; "
                f"use it with REDIS_URL={cluster.url}; Ctrl-C stops it",
                file=sys.stderr,
                flush=True,
            )
            while not stop.wait(0.2):
                if not cluster.running:
                    raise EventcoreError(
                        f"a node of the local cluster exited (logs under {where}/node-*/)"
                    )
    finally:
        if stop.is_set():  # kept after a failure, for its logs
            shutil.rmtree(where, ignore_errors=True)
    return 0


def web_address(host: str, port: int) -> tuple[str, str]:
    """The address to show for the web role, and the one to probe it at (a
    wildcard listen address is reached over loopback)."""
    probe = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)

    def url(h: str) -> str:
        return f"http://[{h}]:{port}" if ":" in h else f"http://{h}:{port}"

    return url(host), url(probe)


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    stop = stop_on_signals()
    host = settings.web.host if args.host is None else args.host
    port = settings.web.port if args.port is None else args.port
    if port == 0:  # picked here, so a restarted web role comes back on the same port
        port = free_port()
    access = listen_options(args)
    with redis_for(settings, start=True, **access) as target:
        facts = asyncio.run(describe(target.url, settings))
        where = "embedded" if target.embedded else "external"
        print(f"eventcore is up. Redis ({where}): {redact(target.url)}", flush=True)
        print(
            f"  {facts.get('server')}, appendonly={facts.get('appendonly', '?')}, "
            f"appendfsync={facts.get('appendfsync', '?')}",
            flush=True,
        )
        for line in join_lines(target.embedded):
            print(line, flush=True)
        if warning := memory_policy_warning(facts):
            print(warning, file=sys.stderr, flush=True)
        stack = Stack(target.url, args.config)
        announcer = None
        try:
            stack.start("projector", "project")
            if not args.no_sql:
                stack.start("sql", "sql")
            for i in range(1, args.workers + 1):
                name = "worker" if args.workers == 1 else f"worker-{i}"
                argv = ["worker", "--node", f"{socket.gethostname()}-cpu-{i}"]
                if args.concurrency is not None:
                    argv += ["--concurrency", str(args.concurrency)]
                stack.start(name, *argv)
            stack.start("web", "web", "--host", host, "--port", str(port))
            shown, probe = web_address(host, port)
            print("Ctrl-C stops it.", flush=True)
            announcer = threading.Thread(
                target=announce_when_ready,
                args=(
                    f"{probe}/readyz",
                    [
                        f"  web: {shown}  (API /v1, live feed /v1/stream, "
                        "IOPaint-compatible /api/v1, readiness /readyz)"
                    ],
                    stop,
                    args.ready_timeout,
                ),
                daemon=True,
            )
            announcer.start()
            wait_for_stop(stop, target.embedded, stack)
        finally:
            stop.set()
            if announcer is not None:
                announcer.join(5)
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
