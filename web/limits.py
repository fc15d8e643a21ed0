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

__all__ = [
    "MAX_DEPTH",
    "BodyLimit",
    "check_value",
    "content_type",
    "decode_any",
    "decode_json",
    "form_values",
    "read_form",
    "read_json",
    "validation_error",
]

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


def validation_error(
    exc: msgspec.ValidationError | msgspec.DecodeError, field: str = ""
) -> ApiError:
    """A 422 whose detail names the field, as msgspec reports it
    (``at `$.priority```); ``field`` is put before a path inside it."""
    text = str(exc)
    if field:
        text = text.replace("`$", f"`{field}") if "`$" in text else f"{field}: {text}"
    found = ""
    if "at `$." in text:
        found = text.rsplit("at `$.", 1)[1].rstrip("`")
    elif "field `" in text:
        found = text.split("field `", 1)[1].split("`", 1)[0]
    err = ApiError(422, "invalid", text)
    err.field = found or field  # type: ignore[attr-defined]
    return err


# How deep a JSON body may nest, counting the body itself: enough for any
# request struct and free-form ``params``; far below where decoding, folding
# or encoding it again would exhaust Python's recursion limit.
MAX_DEPTH = 32
# Integers must fit MessagePack, the log's encoding: int64 or uint64.
INT_MIN, INT_MAX = -(2**63), 2**64 - 1

_any = msgspec.json.Decoder()


def decode_json(data: bytes | str, *, field: str = "") -> Any:
    """JSON text as Python values: the one place request JSON is decoded.
    400 for broken JSON or JSON nested too deeply for the decoder (msgspec
    raises ``RecursionError`` there, not a ``DecodeError``); 422 naming the
    field for nesting deeper than :data:`MAX_DEPTH` or an integer beyond 64
    bits. ``field`` names what the text is (a form field), if not the body."""
    what = f"form field {field!r}" if field else "body"
    try:
        value = _any.decode(data)
    except RecursionError:
        raise ApiError(
            400, "bad_json", f"{what} is nested too deeply (at most {MAX_DEPTH} levels)"
        ) from None
    except msgspec.ValidationError as exc:  # a number out of range, before DecodeError
        raise validation_error(exc, field) from None
    except msgspec.DecodeError as exc:
        raise ApiError(400, "bad_json", f"{what} is not valid JSON: {exc}") from None
    check_value(value, field)
    return value


def check_value(value: Any, field: str = "") -> None:
    """422 naming the place of the first container nested deeper than
    :data:`MAX_DEPTH` or integer beyond 64 bits in decoded JSON. Iterative,
    so no depth can make it recurse."""
    stack: list[tuple[Any, int, tuple[str, ...]]] = [(value, 1, (field,) if field else ())]
    while stack:
        item, depth, path = stack.pop()
        if isinstance(item, dict):
            children: Any = ((f".{k}" if path else str(k), v) for k, v in item.items())
        elif isinstance(item, list):
            children = ((f"[{i}]", v) for i, v in enumerate(item))
        else:
            if type(item) is int and not INT_MIN <= item <= INT_MAX:
                raise _invalid(path, "integer out of range (64 bits: -2**63 to 2**64 - 1)")
            continue
        if depth > MAX_DEPTH:
            raise _invalid(path, f"nested deeper than {MAX_DEPTH} levels")
        for step, child in children:
            if isinstance(child, (dict, list)) or type(child) is int:
                stack.append((child, depth + 1, (*path, step)))


def _invalid(path: tuple[str, ...], why: str) -> ApiError:
    where = "".join(path[:6]) + ("..." if len(path) > 6 else "")
    err = ApiError(422, "invalid", f"{where or 'body'}: {why}")
    err.field = where  # type: ignore[attr-defined]
    return err


async def read_json(request: Request, into: type[T]) -> T:
    """The body as ``into``; 415 for another content type, 400 for broken
    JSON, 422 naming the field for a wrong value."""
    if content_type(request) != "application/json":
        raise ApiError(415, "unsupported_media_type", "send application/json")
    value = decode_json(await request.body())
    try:
        return msgspec.convert(value, into)
    except msgspec.ValidationError as exc:
        raise validation_error(exc) from None


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
