"""A submit request as the web API takes it: its shape and limits, and its
hand-over to the submit service (:mod:`eventcore.submit`), which checks,
routes and appends it; what the service refuses becomes the HTTP error."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from eventcore.blobs import BlobTooLarge
from eventcore.events import Backoff, Priority, RetryPolicy
from eventcore.log import SubmitResult
from eventcore.routing import RoutingError
from eventcore.submit import NewTask, UnknownKind, submit_task
from web.errors import ApiError
from web.state import WebState

__all__ = ["LATEST_EPOCH", "RetryRequest", "SubmitRequest", "submit"]

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
    run_at = (
        req.run_at if req.run_at is not None else (time.time() + req.delay if req.delay else None)
    )
    new = NewTask(
        kind=req.kind,
        params=req.params,
        queue=req.queue,
        priority=req.priority,
        model=req.model,
        tenant=tenant,
        retry=req.retry.policy() if req.retry is not None else None,
        soft_timeout=req.soft_timeout,
        hard_timeout=req.hard_timeout,
        max_deliveries=req.max_deliveries,
        run_at=run_at,
        idempotency_key=idempotency_key or req.idempotency_key,
    )
    try:
        done = await submit_task(
            web.log,
            web.settings,
            new,
            nodes=web.nodes,
            uploads=uploads,
            blobs=web.blobs,
        )
    except BlobTooLarge as exc:
        raise ApiError(413, "too_large", str(exc)) from None
    except UnknownKind as exc:
        raise ApiError(400, "unknown_kind", str(exc)) from None
    except RoutingError as exc:
        raise ApiError(400, "unroutable", str(exc)) from None
    return done.result, done.queue
