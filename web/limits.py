"""Request bodies, read within limits: a size cap enforced while the body
streams in (so a 2 GiB chunked upload costs at most the cap), content types,
JSON decoded straight into request structs, and multipart forms with capped
part counts."""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from web.errors import ApiError

__all__ = ["BodyLimit", "content_type", "read_form", "read_json", "validation_error"]

T = TypeVar("T")


class BodyTooLarge(ApiError):
    def __init__(self, limit: int) -> None:
        super().__init__(413, "too_large", f"request body is larger than {limit} bytes")


class BodyLimit:
    """ASGI middleware: refuses a body over ``max_bytes``, by its
    Content-Length up front or by counting the chunks as they arrive."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            too_large = True
        else:
            too_large = False
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            if too_large:
                raise BodyTooLarge(limit)
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, counted, send)


def content_type(request: Request) -> str:
    return request.headers.get("content-type", "").partition(";")[0].strip().lower()


def validation_error(exc: msgspec.ValidationError | msgspec.DecodeError) -> ApiError:
    """A 422 whose detail names the field, as msgspec reports it (``at `$.priority```)."""
    text = str(exc)
    field = ""
    if "at `$." in text:
        field = text.rsplit("at `$.", 1)[1].rstrip("`")
    elif "field `" in text:
        field = text.split("field `", 1)[1].split("`", 1)[0]
    err = ApiError(422, "invalid", text)
    err.field = field  # type: ignore[attr-defined]
    return err


async def read_json(request: Request, into: type[T]) -> T:
    """The body as ``into``; 415 for another content type, 400 for broken
    JSON, 422 naming the field for a wrong value."""
    if content_type(request) != "application/json":
        raise ApiError(415, "unsupported_media_type", "send application/json")
    body = await request.body()
    try:
        return msgspec.json.decode(body, type=into)
    except msgspec.ValidationError as exc:
        raise validation_error(exc) from None
    except msgspec.DecodeError as exc:
        raise ApiError(400, "bad_json", f"body is not valid JSON: {exc}") from None


async def read_form(request: Request, *, max_files: int, max_fields: int) -> FormData:
    """A multipart (or urlencoded) form with at most ``max_files`` files and
    ``max_fields`` other fields."""
    try:
        return await request.form(max_files=max_files, max_fields=max_fields)
    except MultiPartException as exc:
        raise ApiError(400, "bad_form", str(exc)) from None


def form_values(form: FormData) -> tuple[dict[str, str], dict[str, UploadFile]]:
    """Text fields and files of a form, each name once (a repeated name is refused)."""
    fields: dict[str, str] = {}
    files: dict[str, UploadFile] = {}
    for name, value in form.multi_items():
        if name in fields or name in files:
            raise ApiError(422, "invalid", f"form field {name!r} given more than once")
        if isinstance(value, str):
            fields[name] = value
        else:
            files[name] = value
    return fields, files


def decode_any(data: Any, into: type[T]) -> T:
    """``data`` (already parsed) converted to ``into``, 422 naming the field."""
    try:
        return msgspec.convert(data, into, strict=False)
    except msgspec.ValidationError as exc:
        raise validation_error(exc) from None
