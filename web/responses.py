"""JSON responses: the body every route answers with, and the error shape
(``{"error": code, "detail": text}``) that ``web.errors`` and the routes
that build an error themselves share."""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.responses import JSONResponse, Response

__all__ = ["error_response", "json_response"]

_json = msgspec.json.Encoder()


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """``data`` (anything msgspec encodes: structs, views, dicts) as JSON."""
    return Response(_json.encode(data), status, headers, media_type="application/json")


def error_response(
    status: int, code: str, detail: str, headers: dict[str, str] | None = None, **extra: object
) -> JSONResponse:
    """The error body, with ``extra`` fields (``errors``, ``task_id``) beside it."""
    return JSONResponse({"error": code, "detail": detail, **extra}, status, headers=headers)
