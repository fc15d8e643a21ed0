"""``GET /v1/stream``: view changes as Server-Sent Events.

Each event's ``id`` is the position in the feeds after it (compact and
opaque: :mod:`web.position`), its ``event`` the entity
(``task``, ``node``, ``queue``, ``stats``) and its data the view as JSON. A
client reconnecting with ``Last-Event-ID`` (the header ``EventSource`` sends,
or ``?last_event_id=``) gets every change it missed, in order, then live ones.
A ``resync`` event means: re-read the views you care about, then reconnect
without an id.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from redis.exceptions import RedisError
from sse_starlette.sse import EventSourceResponse, SendTimeoutError, ServerSentEvent
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from eventcore.ids import parse_stream_id
from web.errors import ApiError
from web.feed import FILTERS, FeedFilter, Resync, Revoked
from web.position import PositionError, decode_position
from web.state import state_of

__all__ = ["routes"]

logger = logging.getLogger("eventcore.web.stream")


async def stream(request: Request) -> Response:
    web = state_of(request)
    who = await web.auth.principal(request, "stream")
    params = request.query_params
    unknown = set(params) - {*FILTERS, "ticket", "last_event_id"}
    if unknown:
        raise ApiError(422, "invalid", f"unknown query parameter {sorted(unknown)[0]!r}")
    last_id = request.headers.get("last-event-id") or params.get("last_event_id") or None
    legacy = False
    if last_id is not None:
        try:
            decode_position(last_id)
        except PositionError:
            try:  # a feed entry id, as SSE ids were before view shards: start over
                parse_stream_id(last_id)
                legacy = True
            except ValueError:
                raise ApiError(
                    422,
                    "invalid",
                    f"Last-Event-ID {last_id!r} is not a position this feed gave out",
                ) from None
    tenant = who.tenant if web.auth.enabled and not who.has("admin") else None
    flt = FeedFilter(tenant=tenant, **{f: params[f] for f in FILTERS if f in params})
    hub = web.hub
    # A Redis that is away is a 503 now, not a stream that never speaks. A
    # resume reads the feed anyway, so it asks Redis (waiting on the pool
    # like any request); a new client goes by the hub's reader, so a crowd
    # reconnecting at once takes no connection each.
    dropped = legacy
    if last_id is not None and not legacy:
        dropped = await hub.dropped_after(last_id, web.redis)
    elif not await hub.wait_live(web.settings.web.redis_timeout):
        raise ApiError(
            503,
            "unavailable",
            "the event store (Redis) is unavailable; retry shortly",
            {"Retry-After": "1"},
        )
    web.metrics.sse_clients.inc()

    async def events() -> AsyncIterator[bytes | ServerSentEvent]:
        try:
            if dropped:  # the capped feed no longer holds what this client missed
                raise Resync()
            async for batch in hub.follow(flt, last_id, checked=True, token=who.token):
                yield b"".join(item.frame for item in batch)
        except Revoked:
            yield ServerSentEvent('{"reason": "the token was revoked"}', event="revoked")
        except Resync:
            yield ServerSentEvent('{"reason": "fell behind or missed entries"}', event="resync")
        except RedisError as exc:  # lost while reading history: start over later
            logger.warning("SSE client dropped: %s", exc)
            yield ServerSentEvent('{"reason": "the event store is unavailable"}', event="resync")
        finally:
            web.metrics.sse_clients.dec()

    return FeedResponse(
        events(),
        ping=web.settings.web.sse_ping,
        send_timeout=10.0,
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


class FeedResponse(EventSourceResponse):
    """An SSE response that ends quietly when a client stops reading: its
    send times out, the hub has already let it go, and there is nothing to
    report but a line in the log."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except SendTimeoutError:
            client = scope.get("client") or ("?", 0)
            logger.info("SSE client %s:%s stopped reading; dropped", *client[:2])


async def ticket(request: Request) -> Response:
    web = state_of(request)
    who = await web.auth.principal(request, "stream")
    value, expires = await web.auth.ticket(who)
    return JSONResponse({"ticket": value, "expires_at": expires})


routes = [
    Route("/v1/stream", stream, methods=["GET"]),
    Route("/v1/stream/ticket", ticket, methods=["POST"]),
]
