"""The submit service: the one path from "run this" to a task in the log,
for the web app and ``eventcore submit`` alike.

A submission is checked (its kind is one some worker offers, its uploads
fit the blob cap), routed (:func:`eventcore.routing.route` over the queues
live nodes read and their backlog), its uploads are stored as blobs only
once it is known to be taken, and it is appended with
:meth:`eventcore.log.EventLog.submit`.

What the nodes offer is read from their records (:class:`NodeFacts`); a
caller that submits often (the web app) keeps the facts for a second and
hands them in, a one-off caller (the command line) lets them be read.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import msgspec

from eventcore.blobs import BlobStore, BlobTooLarge, RedisBlobStore
from eventcore.config import QueueConfig, Settings
from eventcore.errors import EventcoreError
from eventcore.events import Priority, RetryPolicy, TaskSpec
from eventcore.log import EventLog, SubmitResult
from eventcore.nodes import NodeRecord, announced_nodes, queue_consumers
from eventcore.routing import accepts, backlog, route

__all__ = [
    "NewTask",
    "NodeFacts",
    "Submitted",
    "UnknownKind",
    "check_kind",
    "choose_queue",
    "node_facts",
    "read_node_facts",
    "submit_task",
]


class UnknownKind(EventcoreError):
    """No worker that ever announced itself offers the task's kind."""


class NodeFacts(msgspec.Struct, frozen=True):
    """What the worker nodes offer, as submitting checks and routes by it."""

    kinds: frozenset[str]  # handlers any node that ever announced itself offers
    served: frozenset[str]  # queues live nodes read
    models: frozenset[str]  # models live nodes announce
    at: float  # when read (monotonic)


def node_facts(
    records: Mapping[str, NodeRecord], *, silent_for: float, now: float, at: float
) -> NodeFacts:
    """The facts of the node records ``records`` as they stand at ``now``
    (wall clock; ``at`` is the monotonic time they were read). A node is live
    as :func:`eventcore.nodes.queue_consumers` counts it."""
    consumers = queue_consumers(records, (), silent_for=silent_for, now=now)
    return NodeFacts(
        kinds=frozenset(h for r in records.values() for h in r.started.capabilities.handlers),
        served=frozenset(q for q, n in consumers.items() if n),
        models=frozenset(
            m
            for r in records.values()
            if r.alive(silent_for, now)
            for m in r.started.capabilities.models
        ),
        at=at,
    )


async def read_node_facts(log: EventLog, *, silent_for: float) -> NodeFacts:
    """:func:`node_facts` of the node records as they are now (one round trip)."""
    records = await announced_nodes(log)
    return node_facts(records, silent_for=silent_for, now=time.time(), at=time.monotonic())


class NewTask(msgspec.Struct, frozen=True, kw_only=True):
    """What a submitter asks for: a :class:`TaskSpec` whose ``queue`` may be
    left to routing, and how to submit it. ``run_at`` (epoch seconds) defers
    the task."""

    kind: str
    params: dict[str, Any] = {}
    queue: str | None = None  # None: routed by kind, model and backlog
    priority: Priority = Priority.NORMAL
    model: str | None = None
    tenant: str = ""
    retry: RetryPolicy | None = None
    soft_timeout: float | None = None
    hard_timeout: float | None = None
    max_deliveries: int | None = None
    run_at: float | None = None
    idempotency_key: str | None = None


class Submitted(msgspec.Struct, frozen=True):
    """The log's answer and the queue the task went to."""

    result: SubmitResult
    queue: str


def check_kind(kind: str, facts: NodeFacts) -> None:
    """Raise :class:`UnknownKind` unless some node offers ``kind``. When no
    node ever announced itself any kind is taken: the task waits for a
    worker that has it."""
    if facts.kinds and kind not in facts.kinds:
        raise UnknownKind(
            f"kind {kind!r} is not offered by any worker; known kinds: "
            f"{', '.join(sorted(facts.kinds))}"
        )


async def choose_queue(
    log: EventLog,
    queues: Sequence[QueueConfig],
    facts: NodeFacts,
    *,
    kind: str,
    model: str | None,
    queue: str | None,
) -> str:
    """The queue :func:`eventcore.routing.route` picks; raises
    :class:`eventcore.routing.RoutingError` when none can take the task.
    Only queues that could take the task have their backlog read, and only
    when there is a choice to make."""
    names = [q.name for q in queues if accepts(q, kind, model)]
    candidates = [n for n in names if n in facts.served] or names
    lengths = await backlog(log, candidates) if queue is None and len(candidates) > 1 else {}
    return route(kind, model, queue, queues, lengths, served=facts.served)


async def submit_task(
    log: EventLog,
    settings: Settings,
    new: NewTask,
    *,
    nodes: Callable[[], Awaitable[NodeFacts]] | None = None,
    uploads: Mapping[str, bytes] | None = None,
    blobs: BlobStore | None = None,
) -> Submitted:
    """Check, route and append ``new``.

    ``nodes`` gives what the nodes offer (the web app's is cached for a
    second); without it the node records are read. ``blobs`` is the store
    uploads go to, made from ``settings`` when not given.

    ``uploads`` (param name -> bytes) are stored as blobs only once the task
    is checked and routed, so a refused submission leaves none; their
    references go in ``params`` under their names. Raises
    :class:`eventcore.blobs.BlobTooLarge` (naming the upload),
    :class:`UnknownKind` or :class:`eventcore.routing.RoutingError`, all
    before anything is written.
    """
    uploads = uploads or {}
    cap = settings.blobs.max_bytes
    for name, data in uploads.items():
        if len(data) > cap:
            raise BlobTooLarge(f"{name}: blob of {len(data)} bytes is over the cap of {cap}")
    if nodes is None:
        facts = await read_node_facts(log, silent_for=settings.worker.heartbeat_timeout)
    else:
        facts = await nodes()
    check_kind(new.kind, facts)
    queue = await choose_queue(
        log, settings.queues, facts, kind=new.kind, model=new.model, queue=new.queue
    )
    params = dict(new.params)
    if uploads:
        if blobs is None:
            blobs = RedisBlobStore(log.redis, log.keys, ttl=settings.blobs.ttl, max_bytes=cap)
        for name, data in uploads.items():
            try:
                params[name] = (await blobs.put(data)).ref
            except BlobTooLarge as exc:
                raise BlobTooLarge(f"{name}: {exc}") from None
    spec = TaskSpec(
        kind=new.kind,
        queue=queue,
        priority=new.priority,
        params=params,
        tenant=new.tenant,
        model=new.model,
        retry=new.retry,
        soft_timeout=new.soft_timeout,
        hard_timeout=new.hard_timeout,
        max_deliveries=new.max_deliveries,
    )
    result = await log.submit(
        spec, idempotency_key=new.idempotency_key, run_at=new.run_at, routed=new.queue is None
    )
    return Submitted(result, queue)
