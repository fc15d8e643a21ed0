"""Connecting to Redis: clear one-line errors at start-up, retries afterwards.

Transient errors (a dropped connection, a timeout) are retried by the client
with capped, jittered exponential backoff, so a Redis restart or failover is
ridden out. A retry re-sends the command; if the connection broke after Redis
ran it but before the reply arrived, a plain append can be written twice.
Submits made with an idempotency key are safe from that, and a ``settle`` sent
twice answers "stale" the second time without writing.

Each client keeps at most ``max_connections`` connections. A command that
finds them all busy waits up to ``pool_timeout`` seconds for one to be
released (a burst of requests queues rather than being refused); only when
that wait runs out does it fail, with a ``ConnectionError`` like any other
unreachable Redis.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.asyncio.connection import (
    BlockingConnectionPool,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    BusyLoadingError,
    ConnectionError,
    RedisError,
    ResponseError,
    TimeoutError,
)

try:
    import hiredis
except ImportError:  # pragma: no cover - hiredis comes with redis[hiredis]
    hiredis = None

from eventcore.codec import text
from eventcore.errors import RedisUnavailable
from eventcore.server.process import MIN_VERSION

__all__ = ["MIN_VERSION", "ClientOptions", "check_url", "connect", "make_client", "redact"]

logger = logging.getLogger(__name__)

SCHEMES = ("redis", "rediss", "unix")


@dataclass(frozen=True, slots=True)
class ClientOptions:
    """Timeouts, retry policy and pool size for a client (see ``RedisSettings``
    in config)."""

    connect_timeout: float = 5.0
    socket_timeout: float = 10.0
    retry_attempts: int = 6
    retry_backoff_base: float = 0.05
    retry_backoff_cap: float = 2.0
    max_connections: int = 100
    pool_timeout: float = 30.0


def redact(url: str) -> str:
    """The URL without its password, fit for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def check_url(url: str) -> str:
    """Refuse a URL whose scheme is not one Redis speaks, naming the scheme."""
    scheme = urlsplit(url).scheme
    if scheme not in SCHEMES:
        shown = f"scheme {scheme!r}" if scheme else "no scheme"
        raise RedisUnavailable(
            f"Redis URL {redact(url)!r} has {shown}; use redis://host:port/db, "
            "rediss:// (TLS) or unix:///path/to/redis.sock"
        )
    return url


class _HiredisPacking:
    """Packs commands with hiredis's C packer.

    redis-py's asyncio connections pack in Python; for the large batched
    script calls of the claim and settle paths that was about 40% of a
    worker's CPU time. The command-name splitting matches redis-py's.
    """

    def pack_command(self, *args: Any) -> list[bytes]:
        first = args[0]
        if isinstance(first, str):
            args = (*first.encode().split(), *args[1:])
        elif b" " in first:
            args = (*first.split(), *args[1:])
        return [hiredis.pack_command(args)]


class _FastConnection(_HiredisPacking, Connection):
    pass


class _FastUnixConnection(_HiredisPacking, UnixDomainSocketConnection):
    pass


class _FastSSLConnection(_HiredisPacking, SSLConnection):
    pass


_FAST = {
    Connection: _FastConnection,
    UnixDomainSocketConnection: _FastUnixConnection,
    SSLConnection: _FastSSLConnection,
}


def make_client(url: str, options: ClientOptions | None = None) -> Redis:
    """A client that retries transient errors with capped, jittered backoff,
    and whose commands wait for a free connection when the pool is full."""
    opts = options or ClientOptions()
    check_url(url)
    retry = Retry(
        ExponentialWithJitterBackoff(cap=opts.retry_backoff_cap, base=opts.retry_backoff_base),
        opts.retry_attempts,
    )
    # redis-py's plain ConnectionPool raises "Too many connections" at its cap;
    # the blocking pool makes a burst wait its turn instead.
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=opts.max_connections,
        timeout=opts.pool_timeout,
        socket_connect_timeout=opts.connect_timeout,
        socket_timeout=opts.socket_timeout,
        retry=retry,
        retry_on_error=[ConnectionError, TimeoutError, BusyLoadingError],
        health_check_interval=30,
    )
    if hiredis is not None and hasattr(hiredis, "pack_command"):
        pool.connection_class = _FAST.get(pool.connection_class, pool.connection_class)
    return Redis.from_pool(pool)  # owns the pool: aclose() closes its connections


async def connect(url: str, options: ClientOptions | None = None) -> Redis:
    """Connect, check the server is usable, and return the client.

    Raises :class:`RedisUnavailable` with one line a person can act on: the
    URL (password hidden) and what went wrong — unreachable, wrong password,
    or a server older than 6.2.
    """
    where = redact(url)
    # At start-up one quick try is better than a minute of silent retries.
    quick = ClientOptions(
        connect_timeout=(options or ClientOptions()).connect_timeout, retry_attempts=0
    )
    probe = make_client(url, quick)
    try:
        info = await probe.info("server")
        policy = await _maxmemory_policy(probe)
    except (AuthenticationError, AuthorizationError) as exc:
        if urlsplit(url).password is None:
            raise RedisUnavailable(
                f"Redis at {where} needs a password and the URL gives none "
                "(redis://user:password@host:port/db)"
            ) from exc
        raise RedisUnavailable(f"Redis at {where} refused the credentials: {exc}") from exc
    except ResponseError as exc:
        if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
            raise RedisUnavailable(f"Redis at {where} needs a password: {exc}") from exc
        raise RedisUnavailable(f"Redis at {where} answered with an error: {exc}") from exc
    except (ConnectionError, TimeoutError, OSError) as exc:
        raise RedisUnavailable(f"cannot reach Redis at {where}: {_reason(exc)}") from exc
    except RedisError as exc:
        raise RedisUnavailable(f"Redis at {where} failed: {exc}") from exc
    finally:
        await probe.aclose()
    version = _version(info)
    if version < MIN_VERSION:
        raise RedisUnavailable(
            f"Redis at {where} is version {'.'.join(map(str, version))}; "
            "eventcore needs 6.2 or newer"
        )
    if policy not in (None, "noeviction"):
        logger.warning(
            "Redis at %s has maxmemory-policy %s: under memory pressure it may evict "
            "streams and lose tasks; set maxmemory-policy noeviction",
            where,
            policy,
        )
    return make_client(url, options)


async def _maxmemory_policy(client: Redis) -> str | None:
    try:
        conf = await client.config_get("maxmemory-policy")
    except ResponseError:  # CONFIG may be disabled by ACL or renamed on managed servers
        return None
    value = conf.get(b"maxmemory-policy", conf.get("maxmemory-policy"))
    return None if value is None else text(value)


def _version(info: dict) -> tuple[int, ...]:
    # Valkey reports both redis_version (compatibility level) and valkey_version.
    raw = info.get("redis_version") or info.get("valkey_version") or "0"
    return tuple(int(x) for x in str(raw).split(".")[:3] if x.isdigit())


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
