"""Turning a submit request into a task: the request's shape, the checks a
task must pass before anything is written (known kind, a queue that takes
it), routing, and waiting for a task to end (for the routes that answer with
the result itself)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from eventcore.blobs import BlobTooLarge
from eventcore.events import TERMINAL_EVENT_TYPES, Backoff, Priority, RetryPolicy, TaskSpec
from eventcore.log import SubmitResult
from eventcore.nodes import announced_nodes
from eventcore.routing import RoutingError, accepts, backlog, route
from web.app import WebState
from web.errors import ApiError

__all__ = [
    "LATEST_EPOCH",
    "Finished",
    "NodeFacts",
    "RetryRequest",
    "SubmitRequest",
    "known_nodes",
    "put_blob",
    "submit",
    "wait_until_done",
]

Name = Annotated[str, Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:\-]+$")]

# Limits of a submit request (README, "Limits"). They bound what a client
# can ask for, not what a worker can run: a queue's own defaults in config
# are not held to them.
DAY = 86_400
MAX_AHEAD = 366 * DAY  # run_at / delay: at most this far ahead
LATEST_EPOCH = 4_102_444_800.0  # 2100-01-01: a larger "seconds since the epoch" is a mistake
MAX_TIMEOUT = 7 * DAY  # soft_timeout, hard_timeout
MAX_DELIVERIES = 1000
MAX_RETRIES = 100
MAX_RETRY_DELAY = DAY  # retry.delay, retry.cap

Seconds = Annotated[float, Meta(gt=0, le=MAX_TIMEOUT)]
RetryDelay = Annotated[float, Meta(ge=0, le=MAX_RETRY_DELAY)]


class RetryRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A request's ``retry``: :class:`RetryPolicy`'s fields and defaults,
    within limits. The bounds live here, not on the event, so entries
    already in a log always decode."""

    max_retries: Annotated[int, Meta(ge=0, le=MAX_RETRIES)] = 3
    backoff: Backoff = Backoff.EXPONENTIAL
    delay: RetryDelay = 1.0
    cap: RetryDelay = 300.0
    jitter: Annotated[float, Meta(ge=0, le=1)] = 0.2
    retry_on: Annotated[
        tuple[Annotated[str, Meta(min_length=1, max_length=200)], ...], Meta(max_length=64)
    ] = ()

    def policy(self) -> RetryPolicy:
        return RetryPolicy(**msgspec.structs.asdict(self))


class SubmitRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``POST /v1/tasks``. ``queue`` unset: routed by kind, model and backlog.
    ``run_at`` (epoch seconds) or ``delay`` (seconds) defers the task, by a
    year at most."""

    kind: Name
    params: dict[str, Any] = {}
    queue: Name | None = None
    priority: Priority = Priority.NORMAL
    model: Name | None = None
    retry: RetryRequest | None = None
    soft_timeout: Seconds | None = None
    hard_timeout: Seconds | None = None
    max_deliveries: Annotated[int, Meta(ge=1, le=MAX_DELIVERIES)] | None = None
    run_at: Annotated[float, Meta(ge=0, le=LATEST_EPOCH)] | None = None
    delay: Annotated[float, Meta(ge=0, le=MAX_AHEAD)] | None = None
    idempotency_key: Annotated[str, Meta(min_length=1, max_length=200)] | None = None

    def __post_init__(self) -> None:
        # Raised here, msgspec reports these as a ValidationError (a 422).
        soft, hard = self.soft_timeout, self.hard_timeout
        if soft is not None and hard is not None and soft > hard:
            raise ValueError(f"soft_timeout ({soft:g}) must not exceed hard_timeout ({hard:g})")
        if self.run_at is not None and self.run_at > time.time() + MAX_AHEAD:
            raise ValueError(f"run_at is more than {MAX_AHEAD // DAY} days ahead")


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
    web: WebState,
    req: SubmitRequest,
    *,
    tenant: str,
    idempotency_key: str | None = None,
    uploads: Mapping[str, bytes] | None = None,
) -> tuple[SubmitResult, str]:
    """Check, route and submit; returns the result and the queue chosen.
    Raises 400 for an unknown kind or a task no queue takes, 413 for an
    upload over the blob cap. ``uploads`` (field name -> bytes) are stored
    as blobs only once the task is checked and routed, so a refused request
    leaves none; their references go in ``params`` under their names."""
    uploads = uploads or {}
    cap = web.settings.blobs.max_bytes
    for name, data in uploads.items():
        if len(data) > cap:
            raise ApiError(
                413, "too_large", f"{name}: blob of {len(data)} bytes is over the cap of {cap}"
            )
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
    params = dict(req.params)
    for name, data in uploads.items():
        params[name] = await put_blob(web, data, name)
    spec = TaskSpec(
        kind=req.kind,
        queue=queue,
        priority=req.priority,
        params=params,
        tenant=tenant,
        model=req.model,
        retry=req.retry.policy() if req.retry is not None else None,
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
