"""The Starlette application, put together: the routes of ``web.tasks``,
``web.stream``, ``web.system``, ``web.history`` and ``web.iopaint``, the body limit, the
error handlers and the lifespan of the shared state (``web.state``).
``create_app(settings)`` is what ``eventcore web`` serves.

The routes never import this module: they reach the shared state through
``web.state.state_of``, and are handed to the app here."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute

from eventcore.config import Settings
from web import history, iopaint, stream, system, tasks
from web.errors import exception_handlers
from web.limits import BodyLimit
from web.state import WebState

__all__ = ["create_app"]


def create_app(settings: Settings, redis_url: str) -> Starlette:
    """The app. Redis is not contacted until the first request, so the app
    starts (and answers 503) while Redis is away."""
    state = WebState(settings, redis_url)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # What start-up allocated lives as long as the process: keep it out of
        # the collector's full passes, which otherwise pause every SSE client.
        gc.collect()
        gc.freeze()
        await state.start()  # the feed reader, and the token watch with auth on
        try:
            yield
        finally:
            await state.close()

    routes: list[BaseRoute] = [
        *tasks.routes,
        *stream.routes,
        *system.routes,
        *history.routes,
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
