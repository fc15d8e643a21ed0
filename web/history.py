"""The task history in SQL over HTTP: ``GET /v1/history/tasks`` and
``GET /v1/history/stats`` (see :mod:`history.queries`), and the SQL row a
task view falls back to once the task has left the Redis views.

The database is the web app's :class:`~web.sqlhistory.SqlHistory`. Until
the SQL projector has created its tables, or while the database does not
answer, these routes answer 503 naming the database; the rest of the API
does not depend on it.

With auth on, a tenant's token sees its tenant's tasks only; an admin token
may pass ``tenant``.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from eventcore.transitions import TaskStatus
from history.queries import BUCKETS, MAX_LIMIT, TaskFilter, find_tasks, task_stats
from web.errors import ApiError
from web.limits import decode_any
from web.responses import json_response
from web.state import state_of
from web.submit import LATEST_EPOCH

__all__ = ["routes"]

Epoch = Annotated[float, Meta(ge=0, le=LATEST_EPOCH)]


class HistoryNumbers(msgspec.Struct, frozen=True, kw_only=True):
    limit: Annotated[int, Meta(ge=1, le=MAX_LIMIT)] = 50
    since: Epoch | None = None
    until: Epoch | None = None


TASK_PARAMS = {"status", "kind", "queue", "node", "since", "until", "error", "limit", "cursor"}
STATS_PARAMS = {"bucket", "kind", "queue", "since", "until"}
STATUSES = {s.value for s in TaskStatus}


async def _filter(request: Request, allowed: set[str]) -> tuple[TaskFilter, HistoryNumbers]:
    web = state_of(request)
    who = await web.auth.principal(request, "read")
    q = request.query_params
    admin = not web.auth.enabled or who.has("admin")
    unknown = set(q) - allowed - ({"tenant"} if admin else set())
    if unknown:
        raise ApiError(422, "invalid", f"unknown query parameter {sorted(unknown)[0]!r}")
    statuses = tuple(s for s in q.get("status", "").split(",") if s)
    for s in statuses:
        if s not in STATUSES:
            raise ApiError(
                422, "invalid", f"status: {s!r} is not one of " + ", ".join(sorted(STATUSES))
            )
    numbers = decode_any({n: q[n] for n in ("limit", "since", "until") if n in q}, HistoryNumbers)
    return (
        TaskFilter(
            tenant=q.get("tenant") if admin else who.tenant,
            status=statuses,
            kind=q.get("kind"),
            queue=q.get("queue"),
            node=q.get("node"),
            since=numbers.since,
            until=numbers.until,
            error=q.get("error") or None,
        ),
        numbers,
    )


async def get_history_tasks(request: Request) -> Response:
    flt, numbers = await _filter(request, TASK_PARAMS)
    cursor = request.query_params.get("cursor") or None
    page = await state_of(request).history.run(find_tasks, flt, limit=numbers.limit, cursor=cursor)
    return json_response({"tasks": page.items, "next_cursor": page.next_cursor})


async def get_history_stats(request: Request) -> Response:
    flt, _ = await _filter(request, STATS_PARAMS)
    bucket = request.query_params.get("bucket", "hour")
    if bucket not in BUCKETS:
        raise ApiError(422, "invalid", f"bucket: {bucket!r} is not one of {', '.join(BUCKETS)}")
    rows = await state_of(request).history.run(task_stats, flt, bucket=bucket)
    return json_response({"bucket": bucket, "rows": rows})


routes = [
    Route("/v1/history/tasks", get_history_tasks, methods=["GET"]),
    Route("/v1/history/stats", get_history_stats, methods=["GET"]),
]
