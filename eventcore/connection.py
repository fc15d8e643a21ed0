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

The same layer serves Redis Cluster: :func:`connect` asks the server whether
it is a cluster node (``cluster_enabled`` in ``INFO cluster``), unless
``ClientOptions.cluster`` says so already, and then returns redis-py's
``RedisCluster`` with the same timeouts and retries, after checking that
every slot is served, the cluster state is ok and every master answers.
:func:`detect_cluster` only asks whether the server is a cluster node (the web
app, which starts before Redis need answer), and :func:`sync_client` gives a
blocking client of the right kind (a worker's child processes).
"""

from __future__ import annotations

import asyncio
import builtins
import contextvars
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, TypeAlias, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterPipeline, RedisCluster
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
from redis.retry import Retry as SyncRetry

try:
    import hiredis
except ImportError:  # pragma: no cover - hiredis comes with redis[hiredis]
    hiredis = None

from eventcore.codec import text
from eventcore.errors import RedisUnavailable
from eventcore.server.cluster import SLOTS, parse_cluster_info
from eventcore.server.process import MIN_VERSION

__all__ = [
    "MIN_VERSION",
    "Client",
    "ClientOptions",
    "ClusterFacts",
    "check_url",
    "cluster_facts",
    "connect",
    "detect_cluster",
    "make_client",
    "redact",
    "sync_client",
]

# Both speak the same commands; a cluster client routes each to its slot's node.
Client: TypeAlias = Redis | RedisCluster

logger = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMES = ("redis", "rediss", "unix")


@dataclass(frozen=True, slots=True)
class ClientOptions:
    """Timeouts, retry policy and pool size for a client (see ``RedisSettings``
    in config). ``cluster``: True for a Redis Cluster client, False for a
    single-server one, None to let :func:`connect` ask the server."""

    connect_timeout: float = 5.0
    socket_timeout: float = 10.0
    retry_attempts: int = 6
    retry_backoff_base: float = 0.05
    retry_backoff_cap: float = 2.0
    max_connections: int = 100
    pool_timeout: float = 30.0
    cluster: bool | None = None


@dataclass(frozen=True, slots=True)
class ClusterFacts:
    """How a Redis Cluster is: its masters (``host:port``), how many of the
    16384 slots are assigned and served, and its ``cluster_state``."""

    masters: tuple[str, ...]
    slots_assigned: int
    slots_ok: int
    state: str


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


def make_client(url: str, options: ClientOptions | None = None) -> Client:
    """A client that retries transient errors with capped, jittered backoff,
    and whose commands wait for a free connection when the pool is full.

    A ``RedisCluster`` when ``options.cluster`` is True, else a single-server
    client: this does not ask the server (it makes no connection), so a
    caller that does not know uses :func:`connect`.
    """
    opts = options or ClientOptions()
    check_url(url)
    retry = Retry(
        ExponentialWithJitterBackoff(cap=opts.retry_backoff_cap, base=opts.retry_backoff_base),
        opts.retry_attempts,
    )
    if opts.cluster:
        return _cluster_client(url, opts, retry)
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


def _cluster_client(url: str, opts: ClientOptions, retry: Retry) -> RedisCluster:
    parts = urlsplit(url)
    where = redact(url)
    if parts.scheme == "unix":
        raise RedisUnavailable(
            f"Redis at {where} is a unix socket; a Redis Cluster client needs the "
            "redis://host:port address of one of its nodes"
        )
    if parts.path.strip("/") not in ("", "0"):
        raise RedisUnavailable(
            f"Redis URL {where!r} names database {parts.path.strip('/')}; "
            "Redis Cluster has only database 0"
        )
    # Its retry object only sets the number of attempts; MOVED/ASK
    # redirections are followed apart from it.
    return _WaitingCluster.from_url(
        url,
        places=opts.max_connections,
        place_timeout=opts.pool_timeout,
        max_connections=opts.max_connections,
        socket_connect_timeout=opts.connect_timeout,
        socket_timeout=opts.socket_timeout,
        retry=retry,
        retry_on_error=[ConnectionError, TimeoutError, BusyLoadingError],
        health_check_interval=30,
        require_full_coverage=True,
    )


# Set while a task runs a command of a _WaitingCluster: a command it starts
# from inside that one (a pipeline retrying a redirected command alone) takes
# no second place, so a full client cannot wait on itself.
_holding: contextvars.ContextVar[bool] = contextvars.ContextVar("holding", default=False)


class _WaitingCluster(RedisCluster):
    """redis-py's ``RedisCluster`` keeps a pool of at most ``max_connections``
    per node and refuses a command when that pool is full
    (``MaxConnectionsError``). This one waits instead, as the single-server
    client's blocking pool does: at most ``places`` commands or pipelines are
    under way at once (each holds at most one connection per node), and one
    more waits up to ``place_timeout`` seconds for a place, then fails with a
    ``ConnectionError`` like an unreachable Redis."""

    def __init__(self, *args: Any, places: int, place_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.places = asyncio.Semaphore(places)
        self.place_timeout = place_timeout

    async def take_place(self) -> bool:
        """Wait for a place; False when this task holds one already (a
        command started from inside another), which it then goes on using."""
        if _holding.get():
            return False
        if not self.places.locked():  # the usual case: no timer, no wait
            await self.places.acquire()
            return True
        try:
            async with asyncio.timeout(self.place_timeout):
                await self.places.acquire()
        except builtins.TimeoutError:  # asyncio's, not redis-py's of the same name
            raise ConnectionError(
                f"no free Redis connection within {self.place_timeout:g}s "
                "(redis.pool_timeout); every one of redis.max_connections is busy"
            ) from None
        return True

    async def in_place(self, run: Callable[[], Awaitable[T]]) -> T:
        """``run()`` holding a place."""
        if not await self.take_place():
            return await run()
        token = _holding.set(True)
        try:
            return await run()
        finally:
            _holding.reset(token)
            self.places.release()

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        if not await self.take_place():
            return await super().execute_command(*args, **kwargs)
        token = _holding.set(True)
        try:
            return await super().execute_command(*args, **kwargs)
        finally:
            _holding.reset(token)
            self.places.release()

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> ClusterPipeline:
        if shard_hint:
            return super().pipeline(transaction, shard_hint)  # refuses it
        return _WaitingPipeline(self, transaction)


class _WaitingPipeline(ClusterPipeline):
    """A pipeline of a :class:`_WaitingCluster`: its execution takes one place."""

    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> Any:
        client = self.cluster_client
        assert isinstance(client, _WaitingCluster)
        run = super().execute
        return await client.in_place(lambda: run(raise_on_error, allow_redirections))


def _quick(options: ClientOptions | None) -> ClientOptions:
    # At start-up one quick try is better than a minute of silent retries.
    # Always a single-server client: it asks one node, whatever it is.
    return ClientOptions(
        connect_timeout=(options or ClientOptions()).connect_timeout,
        retry_attempts=0,
        cluster=False,
    )


def _unavailable(url: str, exc: BaseException) -> RedisUnavailable:
    """One line for a failed first contact with the server at ``url``."""
    where = redact(url)
    if isinstance(exc, (AuthenticationError, AuthorizationError)):
        if urlsplit(url).password is None:
            return RedisUnavailable(
                f"Redis at {where} needs a password and the URL gives none "
                "(redis://user:password@host:port/db)"
            )
        return RedisUnavailable(f"Redis at {where} refused the credentials: {exc}")
    if isinstance(exc, ResponseError):
        if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
            return RedisUnavailable(f"Redis at {where} needs a password: {exc}")
        return RedisUnavailable(f"Redis at {where} answered with an error: {exc}")
    if isinstance(exc, (ConnectionError, TimeoutError, OSError)):
        return RedisUnavailable(f"cannot reach Redis at {where}: {_reason(exc)}")
    return RedisUnavailable(f"Redis at {where} failed: {exc}")


async def connect(url: str, options: ClientOptions | None = None) -> Client:
    """Connect, check the server is usable, and return the client.

    The client is a ``RedisCluster`` when ``options.cluster`` is True, or when
    it is None and the server is a cluster node; the cluster is then checked
    as :func:`cluster_facts` does. Raises :class:`RedisUnavailable` with one
    line a person can act on: the URL (password hidden) and what went wrong —
    unreachable, wrong password, a server older than 6.2, a cluster with
    slots unassigned, not ok, or with a master that does not answer.
    """
    where = redact(url)
    opts = options or ClientOptions()
    probe = make_client(url, _quick(options))
    try:
        info = await probe.info("server")
        enabled = await _cluster_enabled(probe)
        policy = await _maxmemory_policy(probe)
    except (RedisError, OSError) as exc:
        raise _unavailable(url, exc) from exc
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
    cluster = enabled if opts.cluster is None else opts.cluster
    if cluster and not enabled:
        raise RedisUnavailable(
            f"redis.cluster is true but Redis at {where} is not a cluster node "
            "(cluster_enabled:0); unset redis.cluster or give the URL of a cluster node"
        )
    if enabled and not cluster:
        logger.warning(
            "Redis at %s is a cluster node but redis.cluster is false: commands on keys "
            "of other nodes' slots will fail with MOVED",
            where,
        )
    if cluster:
        await cluster_facts(url, opts)
    return make_client(url, replace(opts, cluster=cluster))


async def detect_cluster(url: str, options: ClientOptions | None = None) -> bool:
    """Whether the server at ``url`` is a Redis Cluster node (``cluster_enabled``
    in ``INFO cluster``): ``options.cluster`` when it is set, else one quick
    question to the server, with ``options``' connect and socket timeouts.
    Raises :class:`RedisUnavailable` (one line) when the server does not answer.
    """
    opts = options or ClientOptions()
    if opts.cluster is not None:
        return opts.cluster
    probe = make_client(
        url,
        ClientOptions(
            connect_timeout=opts.connect_timeout,
            socket_timeout=opts.socket_timeout,
            retry_attempts=0,
            cluster=False,
        ),
    )
    try:
        return await _cluster_enabled(probe)
    except (RedisError, OSError) as exc:
        raise _unavailable(url, exc) from exc
    finally:
        await probe.aclose()


def sync_client(url: str, cluster: bool | None = None) -> redis.Redis | redis.RedisCluster:
    """A blocking client, for code that runs outside an event loop (a worker's
    child processes): a ``RedisCluster`` when ``cluster`` is True, or when it
    is None and the server says it is a cluster node; else a plain one.
    Transient errors are retried as the asyncio clients do."""
    check_url(url)
    if cluster is None:
        with redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=10) as probe:
            try:
                info = probe.info("cluster")
            except (RedisError, OSError) as exc:
                raise _unavailable(url, exc) from exc
        cluster = str(info.get("cluster_enabled", 0)) == "1"
    retry = SyncRetry(ExponentialWithJitterBackoff(cap=2.0, base=0.05), 6)
    common: dict[str, Any] = {
        "socket_connect_timeout": 5.0,
        "socket_timeout": 10.0,
        "retry": retry,
        "retry_on_error": [ConnectionError, TimeoutError, BusyLoadingError],
    }
    if cluster:
        return redis.RedisCluster.from_url(url, require_full_coverage=True, **common)
    return redis.Redis.from_url(url, **common)


async def cluster_facts(url: str, options: ClientOptions | None = None) -> ClusterFacts:
    """Ask the cluster node at ``url`` how its cluster is, and each master whether it answers.

    Raises :class:`RedisUnavailable` with one line when the node cannot be
    reached or is no cluster node, when a master does not answer, or when the
    seed or any master sees fewer than 16384 slots assigned or a
    ``cluster_state`` other than ``ok``.
    """
    where = redact(url)
    seed = make_client(url, _quick(options))
    try:
        state = parse_cluster_info(await seed.execute_command("CLUSTER INFO"))
        nodes = await seed.execute_command("CLUSTER NODES")  # parsed: {"host:port": {...}}
    except ResponseError as exc:
        if "cluster support disabled" in str(exc).lower():
            raise RedisUnavailable(f"Redis at {where} is not a cluster node") from exc
        raise _unavailable(url, exc) from exc
    except (RedisError, OSError) as exc:
        raise _unavailable(url, exc) from exc
    finally:
        await seed.aclose()
    masters = tuple(
        sorted(
            address.split("@")[0]
            for address, node in nodes.items()
            if "master" in str(node.get("flags", "")).split(",")
            and "noaddr" not in str(node.get("flags", ""))
        )
    )
    facts = ClusterFacts(
        masters=masters,
        slots_assigned=int(state.get("cluster_slots_assigned", 0)),
        slots_ok=int(state.get("cluster_slots_ok", 0)),
        state=state.get("cluster_state", "?"),
    )
    # Each master has its own view of the cluster (a slot removed on one node
    # is not gossiped to the others), so every one is asked, the seed first.
    views = [("", state)] + [(m, await _node_info(url, m, options)) for m in masters]
    for address, view in views:
        at = f"{where}" if not address else f"{where} (master {address})"
        assigned = int(view.get("cluster_slots_assigned", 0))
        if assigned < SLOTS:
            raise RedisUnavailable(
                f"Redis Cluster at {at} has {assigned} of {SLOTS} slots assigned; "
                "assign the rest (CLUSTER ADDSLOTSRANGE, or redis-cli --cluster fix)"
            )
        if view.get("cluster_state") != "ok":
            raise RedisUnavailable(
                f"Redis Cluster at {at} reports cluster_state:{view.get('cluster_state')} "
                f"({view.get('cluster_slots_ok', '?')} of {SLOTS} slots served); "
                "fix the cluster or wait for a failover"
            )
    return facts


async def _node_info(url: str, address: str, options: ClientOptions | None) -> dict[str, str]:
    """CLUSTER INFO of the node at ``address`` (``host:port``), with the seed URL's credentials."""
    parts = urlsplit(url)
    credentials = parts.netloc.rpartition("@")[0]
    netloc = f"{credentials}@{address}" if credentials else address
    node_url = urlunsplit(parts._replace(netloc=netloc))
    client = make_client(node_url, _quick(options))
    try:
        return parse_cluster_info(await client.execute_command("CLUSTER INFO"))
    except (RedisError, OSError) as exc:
        raise RedisUnavailable(
            f"Redis Cluster at {redact(url)}: master {address} does not answer "
            f"({_reason(exc)}); its slots cannot be served"
        ) from exc
    finally:
        await client.aclose()


async def _cluster_enabled(client: Client) -> bool:
    return str((await client.info("cluster")).get("cluster_enabled", 0)) == "1"


async def _maxmemory_policy(client: Client) -> str | None:
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
