"""HTTP errors: one JSON shape, ``{"error": code, "detail": text}``, and the
mapping from what can go wrong underneath (bad input, Redis away, Redis full)
to a status code. Nothing a client sends can produce a 500."""

from __future__ import annotations

import logging

from redis.exceptions import BusyLoadingError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from eventcore.errors import EventcoreError
from web.responses import error_response

__all__ = ["ApiError", "exception_handlers", "render"]

logger = logging.getLogger("eventcore.web")

# Default codes for statuses raised without one (e.g. Starlette's own 404/405).
CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid",
    503: "unavailable",
    504: "timeout",
}


class ApiError(Exception):
    """An error answered to the client as it is."""

    def __init__(
        self, status: int, code: str, detail: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers or {}


def render(request: Request, err: ApiError) -> Response:
    """The JSON error. The IOPaint-compatible routes also carry ``errors``, the
    text IOPaint's front end shows."""
    extra = {"errors": err.detail} if request.url.path.startswith("/api/") else {}
    return error_response(err.status, err.code, err.detail, err.headers, **extra)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return render(request, exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    err = ApiError(exc.status_code, CODES.get(exc.status_code, "error"), str(exc.detail))
    return render(request, err)


async def _redis_down(request: Request, exc: Exception) -> Response:
    logger.warning("redis unavailable: %s", exc)
    err = ApiError(
        503,
        "unavailable",
        "the event store (Redis) is unavailable; retry shortly",
        {"Retry-After": "1"},
    )
    return render(request, err)


async def _redis_refused(request: Request, exc: Exception) -> Response:
    text = str(exc)
    if text.startswith("OOM") or "maxmemory" in text:
        err = ApiError(
            507,
            "storage_full",
            "the event store (Redis) is out of memory; nothing was written",
            {"Retry-After": "5"},
        )
    else:
        logger.error("redis refused a command: %s", text)
        err = ApiError(
            503,
            "unavailable",
            "the event store refused the command; retry shortly",
            {"Retry-After": "1"},
        )
    return render(request, err)


async def _eventcore_error(request: Request, exc: Exception) -> Response:
    return render(request, ApiError(400, "bad_request", str(exc)))


exception_handlers = {
    ApiError: _api_error,
    HTTPException: _http_error,
    RedisConnectionError: _redis_down,
    RedisTimeoutError: _redis_down,
    BusyLoadingError: _redis_down,
    ResponseError: _redis_refused,
    EventcoreError: _eventcore_error,
}
