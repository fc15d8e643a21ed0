"""Turning a submit request into a task: the request's shape, the checks a
task must pass before anything is written (known kind, a queue that takes
it), routing, and waiting for a task to end (for the routes that answer with
the result itself)."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from eventcore.blobs import BlobTooLarge
from eventcore.events import TERMINAL_EVENT_TYPES, Priority, RetryPolicy, TaskSpec
from eventcore.log import SubmitResult
from eventcore.nodes import announced_nodes
from eventcore.routing import RoutingError, accepts, backlog, route
from web.app import WebState
from web.errors import ApiError

__all__ = [
    "Finished",
    "NodeFacts",
    "SubmitRequest",
    "known_nodes",
    "put_blob",
    "submit",
    "wait_until_done",
]

Name = Annotated[str, Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:\-]+$")]


class SubmitRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``POST /v1/tasks``. ``queue`` unset: routed by kind, model and backlog.
    ``run_at`` (epoch seconds) or ``delay`` (seconds) defers the task."""

    kind: Name
    params: dict[str, Any] = {}
    queue: Name | None = None
    priority: Priority = Priority.NORMAL
    model: Name | None = None
    retry: RetryPolicy | None = None
    soft_timeout: Annotated[float, Meta(gt=0)] | None = None
    hard_timeout: Annotated[float, Meta(gt=0)] | None = None
    max_deliveries: Annotated[int, Meta(ge=1)] | None = None
    run_at: float | None = None
    delay: Annotated[float, Meta(ge=0)] | None = None
    idempotency_key: Annotated[str, Meta(min_length=1, max_length=200)] | None = None


class NodeFacts(msgspec.Struct, frozen=True):
    """What the worker nodes offer, as the web app routes and checks by it."""

    kinds: frozenset[str]  # handlers any node that ever announced itself offers
    served: frozenset[str]  # queues live nodes read
    models: frozenset[str]  # models live nodes announce
    at: float  # when read (monotonic)


async def known_nodes(web: WebState) -> NodeFacts:
    """What the announced nodes offer, read from the node records, cached for
    a second. ``kinds`` is empty when no node ever announced itself: then any
    kind is taken, and the task waits for a worker that has it."""
    now = time.monotonic()
    cached = web.node_facts
    if cached is not None and now - cached.at < 1.0:
        return cached
    records = await announced_nodes(web.log)
    silent_for, wall = web.settings.worker.heartbeat_timeout, time.time()
    alive = [r.started for r in records.values() if r.alive(silent_for, wall)]
    web.node_facts = NodeFacts(
        kinds=frozenset(h for r in records.values() for h in r.started.capabilities.handlers),
        served=frozenset(q for n in alive for q in n.queues),
        models=frozenset(m for n in alive for m in n.capabilities.models),
        at=now,
    )
    return web.node_facts


async def put_blob(web: WebState, data: bytes, field: str) -> str:
    """Store an uploaded file or image as a blob; its reference goes in the
    task's params. Over ``blobs.max_bytes`` is a 413 naming ``field``."""
    try:
        return (await web.blobs.put(data)).ref
    except BlobTooLarge as exc:
        raise ApiError(413, "too_large", f"{field}: {exc}") from None


async def submit(
    web: WebState, req: SubmitRequest, *, tenant: str, idempotency_key: str | None = None
) -> tuple[SubmitResult, str]:
    """Check, route and submit; returns the result and the queue chosen.
    Raises 400 for an unknown kind or a task no queue takes."""
    nodes = await known_nodes(web)
    kinds = nodes.kinds
    if kinds and req.kind not in kinds:
        raise ApiError(
            400,
            "unknown_kind",
            f"kind {req.kind!r} is not offered by any worker; known kinds: "
            f"{', '.join(sorted(kinds))}",
        )
    settings = web.settings
    # Only queues that could take the task need their backlog read, and only
    # when there is a choice to make.
    names = [q.name for q in settings.queues if accepts(q, req.kind, req.model)]
    live = [n for n in names if n in nodes.served]
    candidates = live or names
    lengths = (
        await backlog(web.log, candidates) if req.queue is None and len(candidates) > 1 else {}
    )
    try:
        queue = route(
            req.kind,
            req.model,
            req.queue,
            settings.queues,
            lengths,
            served=nodes.served,
        )
    except RoutingError as exc:
        raise ApiError(400, "unroutable", str(exc)) from None
    spec = TaskSpec(
        kind=req.kind,
        queue=queue,
        priority=req.priority,
        params=req.params,
        tenant=tenant,
        model=req.model,
        retry=req.retry,
        soft_timeout=req.soft_timeout,
        hard_timeout=req.hard_timeout,
        max_deliveries=req.max_deliveries,
    )
    run_at = (
        req.run_at if req.run_at is not None else (time.time() + req.delay if req.delay else None)
    )
    key = idempotency_key or req.idempotency_key
    result = await web.log.submit(
        spec, idempotency_key=key, run_at=run_at, routed=req.queue is None
    )
    return result, queue


class Finished(msgspec.Struct, frozen=True):
    """How a task ended, read from its log: the terminal event."""

    task_id: str
    status: str
    event: Any


async def wait_until_done(web: WebState, task_id: str, timeout: float) -> Finished | None:
    """Follow the task's partition stream until its terminal event; None when
    ``timeout`` runs out first. Reads the log, not the views, so it does not
    depend on the projector."""
    log = web.waiting_log
    stream = log.keys.events(log.keys.partition(task_id))
    deadline = time.monotonic() + timeout
    position = "0-0"
    for entry in await log.history(task_id):
        position = entry.id
        if isinstance(entry.event, TERMINAL_EVENT_TYPES):
            return _finished(task_id, entry.event)
    while (left := deadline - time.monotonic()) > 0:
        block = max(1, min(int(left * 1000), 1000))
        for entry in await log.tail({stream: position}, count=1000, block_ms=block):
            position = entry.id
            if entry.event.task_id == task_id and isinstance(entry.event, TERMINAL_EVENT_TYPES):
                return _finished(task_id, entry.event)
        await asyncio.sleep(0)
    return None


def _finished(task_id: str, event: Any) -> Finished:
    return Finished(task_id, event.type_name().removeprefix("task."), event)
