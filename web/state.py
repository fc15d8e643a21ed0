"""What the routes share, one per app: the Redis clients, the event log, the
views in use, blobs, the feed hub, auth, metrics and what the worker nodes
offer. The routes reach it with :func:`state_of`; the app (``web.app``)
makes it and owns its lifetime."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from starlette.requests import Request

from eventcore.blobs import RedisBlobStore
from eventcore.config import Settings
from eventcore.connection import Client, ClientOptions, detect_cluster, make_client, redact
from eventcore.errors import RedisUnavailable
from eventcore.keys import Keys
from eventcore.log import EventLog
from eventcore.submit import NodeFacts, read_node_facts
from projections.store import ViewStore, current_views
from web.auth import Auth
from web.feed import FeedHub
from web.metrics import Metrics
from web.sqlhistory import SqlHistory

__all__ = ["WebState", "state_of"]

logger = logging.getLogger(__name__)

# How long what the nodes offer (``WebState.nodes``) is kept before it is read again.
NODE_FACTS_TTL = 1.0
# How often a server that did not answer at start-up is asked whether it is a cluster.
DETECT_EVERY = 1.0


class WebState:
    """Everything the routes share, one per app.

    Two Redis clients: ``redis`` answers requests and gives up fast (a Redis
    that does not answer turns into a 503 within a second); ``blocking`` is
    for reads that wait on purpose (the feed, control acks, task results).
    Each has its own pool of ``redis.max_connections``; a request that finds
    its pool busy waits up to ``redis.pool_timeout`` for a connection. Both
    are Redis Cluster clients when ``redis.cluster`` is true or, unset, when
    the server says it is a cluster node (see :meth:`start`).
    """

    def __init__(self, settings: Settings, redis_url: str) -> None:
        self.settings = settings
        self.redis_url = redis_url
        # Until start() has asked the server, a single-server client unless
        # redis.cluster says otherwise.
        self._build(bool(settings.redis.cluster))
        self.metrics = Metrics()
        # What the nodes offer, as last read (None: read it on next use).
        self.node_facts: NodeFacts | None = None
        self._store: ViewStore | None = None
        self._store_checked = 0.0
        self._detecting: asyncio.Task[None] | None = None
        self._watch: asyncio.Task[None] | None = None
        self._hub_started = False
        self.history = SqlHistory(settings)

    def _build(self, cluster: bool) -> None:
        """The clients (Redis Cluster ones when ``cluster``) and all that uses them."""
        settings = self.settings
        r, w = settings.redis, settings.web
        keys = Keys(settings.namespace, settings.partitions)
        self.cluster = cluster
        self.redis: Client = make_client(
            self.redis_url,
            ClientOptions(
                # Not web.redis_timeout: a connection is made once and kept, and
                # under a burst the event loop alone can take longer than that to
                # finish a handshake; a refused or reset connection fails at once.
                connect_timeout=r.connect_timeout,
                socket_timeout=w.redis_timeout,
                retry_attempts=0,
                max_connections=r.max_connections,
                pool_timeout=r.pool_timeout,
                cluster=cluster,
            ),
        )
        self.blocking: Client = make_client(
            self.redis_url,
            ClientOptions(
                connect_timeout=r.connect_timeout,
                socket_timeout=max(r.socket_timeout, 5.0),
                retry_attempts=r.retry_attempts,
                retry_backoff_base=r.retry_backoff_base,
                retry_backoff_cap=r.retry_backoff_cap,
                max_connections=r.max_connections,
                pool_timeout=r.pool_timeout,
                cluster=cluster,
            ),
        )
        self.log = EventLog(
            self.redis, keys, group=settings.group, idempotency_ttl=settings.idempotency_ttl
        )
        self.waiting_log = EventLog(self.blocking, keys, group=settings.group)
        self.blobs = RedisBlobStore(
            self.redis, keys, ttl=settings.blobs.ttl, max_bytes=settings.blobs.max_bytes
        )
        self.auth = Auth(self.log, w)
        self.hub = FeedHub(self.waiting_log, buffer=w.sse_buffer)

    async def start(self) -> None:
        """Before the first request: with ``redis.cluster`` unset, ask the
        server whether it is a Redis Cluster node and, if so, switch to
        cluster clients. A server that does not answer yet is asked again
        every second in the background (requests answer 503 meanwhile), and
        the clients are switched once it answers as a cluster node."""
        if self.settings.redis.cluster is None and not await self._detect():
            logger.warning(
                "Redis at %s does not answer yet; whether it is a Redis Cluster is "
                "asked again every second (redis.cluster set saves asking)",
                redact(self.redis_url),
            )
            self._detecting = asyncio.create_task(self._detect_until_answered(), name="detect")
        await self._start_parts()

    async def _detect(self) -> bool:
        """Ask the server and switch the clients if it is not what they are
        made for; False when it did not answer."""
        options = ClientOptions(
            connect_timeout=self.settings.redis.connect_timeout,
            socket_timeout=self.settings.web.redis_timeout,
        )
        try:
            cluster = await detect_cluster(self.redis_url, options)
        except RedisUnavailable:
            return False
        if cluster != self.cluster:
            logger.info("Redis at %s is a Redis Cluster node", redact(self.redis_url))
            old = (self.redis, self.blocking)
            started = self._hub_started
            if started:
                await self._stop_parts()
            self._build(cluster)
            self._store = None
            if started:
                await self._start_parts()
            for client in old:
                await client.aclose()
        return True

    async def _detect_until_answered(self) -> None:
        while not await self._detect():
            await asyncio.sleep(DETECT_EVERY)

    async def _start_parts(self) -> None:
        """The feed reader and, with auth on, the watch on open streams' tokens."""
        await self.hub.start()
        self._hub_started = True
        if self.auth.enabled:
            self._watch = asyncio.create_task(self.auth.watch_streams(self.hub), name="token-watch")

    async def _stop_parts(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None
        await self.hub.stop()
        self._hub_started = False

    async def nodes(self) -> NodeFacts:
        """What the announced nodes offer, read from their records and kept
        for a second: every submit checks and routes by it."""
        facts = self.node_facts
        if facts is None or time.monotonic() - facts.at >= NODE_FACTS_TTL:
            facts = await read_node_facts(
                self.log, silent_for=self.settings.worker.heartbeat_timeout
            )
            self.node_facts = facts
        return facts

    async def store(self) -> ViewStore:
        """The views in use; the pointer a rebuild switches is re-read once a second."""
        now = time.monotonic()
        if self._store is None or now - self._store_checked > 1.0:
            ns = await current_views(self.log)
            if self._store is None or self._store.ns != ns:
                self._store = ViewStore(self.log, ns)
            self._store_checked = now
        return self._store

    async def close(self) -> None:
        if self._detecting is not None:
            self._detecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._detecting
        await self._stop_parts()
        await self.redis.aclose()
        await self.blocking.aclose()
        self.history.close()


def state_of(request: Request) -> WebState:
    """The app's :class:`WebState`, as ``web.app.create_app`` set it."""
    state: WebState = request.app.state.web
    return state
