"""The Starlette application: its shared state (Redis clients, the event log,
the views in use, blobs, the feed hub, auth) and how the routes are put
together. ``create_app(settings)`` is what ``eventcore web`` serves."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import AsyncIterator
from typing import Any

from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.routing import BaseRoute

from eventcore.blobs import RedisBlobStore
from eventcore.config import Settings
from eventcore.connection import ClientOptions, make_client
from eventcore.keys import Keys
from eventcore.log import EventLog
from projections.store import ViewStore, current_views
from web.auth import Auth, Principal
from web.errors import exception_handlers
from web.feed import FeedHub
from web.limits import BodyLimit
from web.metrics import Metrics

__all__ = ["WebState", "create_app", "state_of"]


class WebState:
    """Everything the routes share, one per app.

    Two Redis clients: ``redis`` answers requests and gives up fast (a Redis
    that does not answer turns into a 503 within a second); ``blocking`` is
    for reads that wait on purpose (the feed, control acks, task results).
    Each has its own pool of ``redis.max_connections``; a request that finds
    its pool busy waits up to ``redis.pool_timeout`` for a connection.
    """

    def __init__(self, settings: Settings, redis_url: str) -> None:
        self.settings = settings
        r, w = settings.redis, settings.web
        keys = Keys(settings.namespace, settings.partitions)
        self.redis: Redis = make_client(
            redis_url,
            ClientOptions(
                # Not web.redis_timeout: a connection is made once and kept, and
                # under a burst the event loop alone can take longer than that to
                # finish a handshake; a refused or reset connection fails at once.
                connect_timeout=r.connect_timeout,
                socket_timeout=w.redis_timeout,
                retry_attempts=0,
                max_connections=r.max_connections,
                pool_timeout=r.pool_timeout,
            ),
        )
        self.blocking: Redis = make_client(
            redis_url,
            ClientOptions(
                connect_timeout=r.connect_timeout,
                socket_timeout=max(r.socket_timeout, 5.0),
                retry_attempts=r.retry_attempts,
                retry_backoff_base=r.retry_backoff_base,
                retry_backoff_cap=r.retry_backoff_cap,
                max_connections=r.max_connections,
                pool_timeout=r.pool_timeout,
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
        self.metrics = Metrics()
        self.node_facts: Any = None  # web.submit.NodeFacts, cached for a second
        self._store: ViewStore | None = None
        self._store_checked = 0.0

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
        await self.hub.stop()
        await self.redis.aclose()
        await self.blocking.aclose()


def state_of(request: Request) -> WebState:
    return request.app.state.web


def principal_of(request: Request) -> Principal:
    return request.state.principal


def create_app(settings: Settings, redis_url: str) -> Starlette:
    """The app. Redis is not contacted until the first request, so the app
    starts (and answers 503) while Redis is away."""
    from web import iopaint, stream, system, tasks

    state = WebState(settings, redis_url)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # What start-up allocated lives as long as the process: keep it out of
        # the collector's full passes, which otherwise pause every SSE client.
        gc.collect()
        gc.freeze()
        await state.hub.start()
        watch = (
            asyncio.create_task(state.auth.watch_streams(state.hub), name="token-watch")
            if state.auth.enabled
            else None
        )
        try:
            yield
        finally:
            if watch is not None:
                watch.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watch
            await state.close()

    routes: list[BaseRoute] = [
        *tasks.routes,
        *stream.routes,
        *system.routes,
        *iopaint.routes,
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(BodyLimit, max_bytes=settings.web.max_body_bytes)],
        exception_handlers=exception_handlers,  # type: ignore[arg-type]
        lifespan=lifespan,
    )
    app.state.web = state
    app.state.api_bodies = {**tasks.BODIES, **system.BODIES, **iopaint.BODIES}
    return app
