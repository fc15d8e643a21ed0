"""``/v1/tasks``: submit, list, get, history, result, cancel, retry."""

from __future__ import annotations

import time
from typing import Annotated, Any

import msgspec
from msgspec import Meta
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from eventcore.blobs import BlobMissing
from eventcore.events import TERMINAL_EVENT_TYPES, TaskSubmitted, TaskSucceeded
from eventcore.ids import is_task_id, parse_stream_id, stream_id_key
from eventcore.log import CancelOutcome
from eventcore.transitions import TERMINAL, TaskStatus
from projections.read import TaskFilter, caught_up, list_tasks, wait_for
from projections.views import TaskView
from web.errors import ApiError
from web.limits import (
    content_type,
    decode_any,
    decode_json,
    form_values,
    read_form,
    read_json,
)
from web.responses import json_response
from web.state import WebState, state_of
from web.submit import LATEST_EPOCH, SubmitRequest, submit

__all__ = ["routes"]

# -- submit -------------------------------------------------------------------------


async def create_task(request: Request) -> Response:
    web = state_of(request)
    who = await web.auth.principal(request, "submit")
    ctype = content_type(request)
    uploads: dict[str, bytes] = {}
    if ctype == "application/json":
        req = await read_json(request, SubmitRequest)
    elif ctype == "multipart/form-data":
        req, uploads = await _from_form(web, request)
    else:
        raise ApiError(
            415,
            "unsupported_media_type",
            "send application/json, or multipart/form-data with image files",
        )
    key = request.headers.get("idempotency-key")
    if key is not None and not 0 < len(key) <= 200:
        raise ApiError(422, "invalid", "Idempotency-Key must be 1 to 200 characters")
    result, queue = await submit(web, req, tenant=who.tenant, idempotency_key=key, uploads=uploads)
    body = {
        "task_id": result.task_id,
        "event_id": result.event_id,
        "queue": queue,
        "created": result.created,
        "links": {"self": f"/v1/tasks/{result.task_id}?after={result.event_id}"}
        if result.event_id
        else {"self": f"/v1/tasks/{result.task_id}"},
    }
    return json_response(
        body, 202 if result.created else 200, {"Location": f"/v1/tasks/{result.task_id}"}
    )


async def _from_form(web: WebState, request: Request) -> tuple[SubmitRequest, dict[str, bytes]]:
    """A multipart submit: text fields are the request's fields (``params`` as
    a JSON object, ``retry`` too); each file is returned to become a blob
    whose reference goes in ``params`` under the file's field name (``image``,
    ``mask``) once the task is checked and routed."""
    w = web.settings.web
    form = await read_form(request, max_files=w.max_files, max_fields=w.max_fields)
    try:
        fields, files = form_values(form)
        data: dict[str, Any] = dict(fields)
        for name in ("params", "retry"):
            if name in data:
                data[name] = decode_json(data[name], field=name)
        if not isinstance(data.get("params", {}), dict):
            raise ApiError(422, "invalid", "params: must be a JSON object")
        req = decode_any(data, SubmitRequest)
        return req, {name: await upload.read() for name, upload in files.items()}
    finally:
        await form.close()


# -- reads --------------------------------------------------------------------------


def _task_id(request: Request) -> str:
    task_id = request.path_params["task_id"]
    if not is_task_id(task_id):
        raise ApiError(404, "not_found", f"no task {task_id!r}")
    return task_id


async def _after(web: WebState, request: Request, stream: str | None) -> bool:
    """Wait (``web.read_wait`` at most) until the views include ``after=``;
    False if they did not catch up in time."""
    after = request.query_params.get("after")
    if not after:
        return True
    try:
        parse_stream_id(after)
    except ValueError:
        raise ApiError(422, "invalid", f"after={after!r} is not a stream entry id") from None
    store = await web.store()
    streams = (
        [stream] if stream else [web.log.keys.events(p) for p in web.log.keys.all_partitions()]
    )
    deadline = time.monotonic() + web.settings.web.read_wait  # one wait for all partitions
    for s in streams:
        if stream is None and await _stream_before(web, s, after):
            continue  # nothing at or after ``after`` to wait for in this partition
        if not await wait_for(store, s, after, timeout=max(0.0, deadline - time.monotonic())):
            return False
    return True


async def _stream_before(web: WebState, stream: str, after: str) -> bool:
    """Whether the views already hold all of ``stream`` and it ends before ``after``."""
    newest = await web.redis.xrevrange(stream, count=1)
    if not newest:
        return True
    last = newest[0][0].decode()
    store = await web.store()
    return stream_id_key(last) < stream_id_key(after) and await caught_up(store, stream, last)


async def _visible(web: WebState, request: Request, scope: str = "read") -> tuple[str, TaskView]:
    who = await web.auth.principal(request, scope)
    task_id = _task_id(request)
    fresh = await _after(web, request, web.log.keys.events(web.log.keys.partition(task_id)))
    view = await (await web.store()).task(task_id)
    if view is None:
        # A task that left the Redis views (views.retention) is in the SQL history.
        view = await web.history.task(task_id)
        request.state.from_history = view is not None
    if view is None or (web.auth.enabled and not who.has("admin") and view.tenant != who.tenant):
        raise ApiError(
            404,
            "not_found",
            f"no task {task_id!r}"
            + ("" if fresh else " yet (the views are behind; retry shortly)"),
        )
    request.state.fresh = fresh
    return task_id, view


def _stale_header(request: Request) -> dict[str, str]:
    headers = {} if getattr(request.state, "fresh", True) else {"X-Views-Behind": "true"}
    if getattr(request.state, "from_history", False):
        headers["X-From-History"] = "true"
    return headers


async def get_task(request: Request) -> Response:
    _, view = await _visible(state_of(request), request)
    return json_response(view, headers=_stale_header(request))


Epoch = Annotated[float, Meta(ge=0, le=LATEST_EPOCH)]


class ListNumbers(msgspec.Struct, frozen=True, kw_only=True):
    """The numbers of a list query, read leniently from the query string (so
    ``limit=1.5`` is an error naming ``limit``, not a 500)."""

    limit: Annotated[int, Meta(ge=1, le=500)] = 50
    since: Epoch | None = None  # submitted at or after (seconds since the epoch)
    until: Epoch | None = None  # submitted before


LIST_PARAMS = {"status", "queue", "kind", "node", "since", "until", "limit", "cursor", "after"}


async def get_tasks(request: Request) -> Response:
    web = state_of(request)
    who = await web.auth.principal(request, "read")
    q = request.query_params
    unknown = (
        set(q) - LIST_PARAMS - ({"tenant"} if not web.auth.enabled or who.has("admin") else set())
    )
    if unknown:
        raise ApiError(422, "invalid", f"unknown query parameter {sorted(unknown)[0]!r}")
    if "status" in q and q["status"] not in {s.value for s in TaskStatus}:
        raise ApiError(
            422,
            "invalid",
            f"status {q['status']!r} is not one of " + ", ".join(s.value for s in TaskStatus),
        )
    numbers = decode_any({n: q[n] for n in ("limit", "since", "until") if n in q}, ListNumbers)
    cursor = q.get("cursor")
    if cursor is not None and not _is_cursor(cursor):
        raise ApiError(422, "invalid", f"cursor {cursor!r} is not one this API gave out")
    tenant = q.get("tenant")
    if web.auth.enabled and not who.has("admin"):
        tenant = who.tenant
    flt = TaskFilter(
        status=q.get("status"),
        queue=q.get("queue"),
        kind=q.get("kind"),
        node=q.get("node"),
        tenant=tenant,
        since=numbers.since,
        until=numbers.until,
    )
    fresh = await _after(web, request, None)
    try:
        page = await list_tasks(await web.store(), flt, limit=numbers.limit, cursor=cursor)
    except ValueError as exc:
        raise ApiError(422, "invalid", str(exc)) from None
    return json_response(
        {"tasks": page.tasks, "next_cursor": page.next_cursor},
        headers={} if fresh else {"X-Views-Behind": "true"},
    )


def _is_cursor(text: str) -> bool:
    """Whether ``text`` has the shape of a cursor this API gives out:
    ``<ms>:<task id>``, ASCII digits (``int()`` would take others)."""
    ms, _, task_id = text.partition(":")
    return 0 < len(ms) <= 20 and ms.isascii() and ms.isdigit() and is_task_id(task_id)


async def get_events(request: Request) -> Response:
    web = state_of(request)
    task_id, _ = await _visible(web, request)
    entries = await web.log.history(task_id)
    return json_response([{"id": e.id, "event": e.event} for e in entries])


async def get_result(request: Request) -> Response:
    web = state_of(request)
    task_id, view = await _visible(web, request)
    if view.status != TaskStatus.SUCCEEDED:
        status = view.status.value if view.status else "unknown"
        raise ApiError(
            409,
            "no_result",
            f"task {task_id} is {status}; only a succeeded task has a result",
            {"Retry-After": "1"} if view.status not in TERMINAL else {},
        )
    if view.result_ref:
        try:
            data = await web.blobs.get(view.result_ref)
        except BlobMissing:
            raise ApiError(410, "gone", f"the result of task {task_id} has expired") from None
        return Response(
            data,
            media_type=sniff(data),
            headers={"Content-Disposition": f'inline; filename="{task_id}{_ext(data)}"'},
        )
    return json_response(view.result)


def sniff(data: bytes) -> str:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


def _ext(data: bytes) -> str:
    return {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp"}.get(sniff(data), "")


# -- actions -------------------------------------------------------------------------


class CancelRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    reason: str = ""


async def cancel_task(request: Request) -> Response:
    web = state_of(request)
    who = await web.auth.principal(request, "submit")
    task_id = _task_id(request)
    reason = ""
    if await request.body():
        reason = (await read_json(request, CancelRequest)).reason
    tenant = await _tenant_of(web, task_id)
    if tenant is None or (web.auth.enabled and not who.has("admin") and tenant != who.tenant):
        raise ApiError(404, "not_found", f"no task {task_id!r}")
    result = await web.log.request_cancel(task_id, reason=reason, by=who.name)
    body = {"task_id": task_id, "outcome": result.outcome.value, "event_id": result.event_id}
    if result.outcome == CancelOutcome.ALREADY_DONE:
        body["ended_as"] = result.ended_as
        return json_response(body, 409)
    return json_response(body, 202)


async def _tenant_of(web: WebState, task_id: str) -> str | None:
    """The task's tenant: from its submission in the log (the views may lag
    behind), else from its view (the log may have been trimmed behind a
    snapshot); None for a task neither knows."""
    for entry in await web.log.history(task_id):
        if isinstance(entry.event, TaskSubmitted):
            return entry.event.spec.tenant
    view = await (await web.store()).task(task_id)
    return None if view is None else view.tenant


async def retry_task(request: Request) -> Response:
    """Submit a finished (failed, timed out, dead-lettered or cancelled) task
    again, as a new task with the same spec; the answer names both."""
    web = state_of(request)
    who = await web.auth.principal(request, "submit")
    task_id = _task_id(request)
    history = [e.event for e in await web.log.history(task_id)]
    submitted = next((e for e in history if isinstance(e, TaskSubmitted)), None)
    if submitted is None:
        tenant = await _tenant_of(web, task_id)
        if tenant is not None and (
            not web.auth.enabled or who.has("admin") or tenant == who.tenant
        ):
            raise ApiError(
                410,
                "gone",
                f"task {task_id}'s submission was trimmed from the log; it cannot be run again",
            )
        raise ApiError(404, "not_found", f"no task {task_id!r}")
    if web.auth.enabled and not who.has("admin") and submitted.spec.tenant != who.tenant:
        raise ApiError(404, "not_found", f"no task {task_id!r}")
    ended = next((e for e in history if isinstance(e, TERMINAL_EVENT_TYPES)), None)
    if ended is None:
        raise ApiError(409, "not_finished", f"task {task_id} has not finished; cancel it first")
    if type(ended) is TaskSucceeded:  # event types are final: one tag each
        raise ApiError(409, "succeeded", f"task {task_id} succeeded; submit a new task instead")
    result = await web.log.submit(submitted.spec, routed=submitted.routed)
    return json_response(
        {
            "task_id": result.task_id,
            "event_id": result.event_id,
            "retry_of": task_id,
            "queue": submitted.spec.queue,
        },
        202,
        {"Location": f"/v1/tasks/{result.task_id}"},
    )


# Request bodies, for /openapi.json.
BODIES = {
    ("POST", "/v1/tasks"): SubmitRequest,
    ("POST", "/v1/tasks/{task_id}/cancel"): CancelRequest,
}

routes = [
    Route("/v1/tasks", create_task, methods=["POST"]),
    Route("/v1/tasks", get_tasks, methods=["GET"]),
    Route("/v1/tasks/{task_id}", get_task, methods=["GET"]),
    Route("/v1/tasks/{task_id}/events", get_events, methods=["GET"]),
    Route("/v1/tasks/{task_id}/result", get_result, methods=["GET"]),
    Route("/v1/tasks/{task_id}/cancel", cancel_task, methods=["POST"]),
    Route("/v1/tasks/{task_id}/retry", retry_task, methods=["POST"]),
]
