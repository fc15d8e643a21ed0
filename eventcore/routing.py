"""Routing: which queue a submitted task goes to.

The rule, in full:

1. A task that names its ``queue`` is *pinned*: it goes there, provided the
   queue is declared and its ``kinds`` (if any) include the task's kind.
2. Otherwise the task is *routed*. The eligible queues are those whose
   ``kinds`` is empty or lists the kind and, when the task names a ``model``,
   whose ``models`` is empty or lists the model. No eligible queue is an error
   (:class:`RoutingError`) at submit time, never a task that waits forever.
3. If live nodes read (``served``) any eligible queue, the served one with the
   least backlog wins; a tie goes to the queue declared first.
4. If none is served (no node is live yet, as in the seconds after
   ``eventcore up`` starts, or none of the live ones can run the task), the
   *least demanding* eligible queue wins: the one the most machines could
   serve. Queues compare by their requirements in this order: no GPU before
   GPU, then ``min_gpu_memory_mb``, ``min_cores``, ``min_memory_mb`` and the
   number of ``models``, lowest first (:func:`demand`); a tie goes to the least
   backlog, then to the queue declared first.

Step 4 is why the first task after start-up runs: with the default queues, an
``inpaint`` routed before the CPU worker announced itself goes to
``cpu-light``, which any worker can read, not to ``gpu-high``, which a machine
without a GPU never reads. A routed task that still ends up waiting on a queue
nobody reads is moved to a served one by the workers (see
:mod:`workers.reroute`, which applies this same rule); a pinned task is never
moved.

A catch-all queue and a queue that lists the kind are equally eligible: the
rule stays short, and the declaration order in config is the tie-break an
operator controls.

Coming from Celery: an explicit queue is ``apply_async(queue=...)``, and the
``kinds`` of a queue play the part of ``task_routes``; what Celery lacks is
steps 3 and 4, where several queues may take a task and the least loaded one
that a live worker reads does.
Coming from BullMQ: an explicit queue is the ``Queue`` object you ``add()`` to;
leave it out and the router chooses among the queues that can run the job.
Either way, the queue decides *which workers* may run a task (through their
capabilities, see :mod:`workers.capabilities`), not the order of work: that is
the task's priority.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING

from eventcore.config import QueueConfig
from eventcore.errors import EventcoreError
from eventcore.events import PRIORITIES_HIGH_FIRST

if TYPE_CHECKING:
    from eventcore.log import EventLog

__all__ = ["RoutingError", "accepts", "backlog", "demand", "route"]


class RoutingError(EventcoreError):
    """No queue can take the task. The message says why and what to change."""


def accepts(queue: QueueConfig, kind: str, model: str | None = None) -> bool:
    """Whether ``queue`` may be chosen for a task of ``kind`` (and ``model``)."""
    if queue.kinds and kind not in queue.kinds:
        return False
    return model is None or not queue.models or model in queue.models


def demand(queue: QueueConfig) -> tuple[int, int, int, int, int]:
    """How much a queue asks of a machine, as a key to sort by: the least
    demanding queue (the one the most machines could serve) sorts first.

    A GPU memory minimum counts as needing a GPU, as it does for the workers
    (:func:`workers.capabilities.unmet`).
    """
    needs_gpu = queue.gpu or queue.min_gpu_memory_mb > 0
    return (
        int(needs_gpu),
        queue.min_gpu_memory_mb,
        queue.min_cores,
        queue.min_memory_mb,
        len(queue.models),
    )


def route(
    kind: str,
    model: str | None,
    queue: str | None,
    queues: Sequence[QueueConfig],
    backlog: Mapping[str, int],
    *,
    served: Collection[str],
) -> str:
    """The name of the queue a task of ``kind`` (using ``model``) goes to.

    ``queue`` is the submitter's explicit choice, if any. ``backlog`` maps queue
    names to the number of tasks waiting; a queue missing from it counts as
    empty. ``served`` names the queues live nodes read (empty: no node is
    live). See the module's docstring for the rule. Raises
    :class:`RoutingError` when the task cannot be placed.
    """
    if queue is not None:
        return _explicit(kind, queue, queues)
    eligible = [q for q in queues if accepts(q, kind, model)]
    if not eligible:
        what = f"kind {kind!r}" + (f" with model {model!r}" if model is not None else "")
        raise RoutingError(
            f"no queue accepts {what}; declared: {_describe(queues)}. "
            "Add the kind (and model) to a queue's `kinds` (and `models`) in [[queues]], "
            "or leave them empty to accept anything"
        )
    live = [q for q in eligible if q.name in served]
    if live:
        # min() keeps the first of equals: a tie goes to the queue declared first.
        return min(live, key=lambda q: backlog.get(q.name, 0)).name
    return min(eligible, key=lambda q: (demand(q), backlog.get(q.name, 0))).name


def _explicit(kind: str, name: str, queues: Sequence[QueueConfig]) -> str:
    for q in queues:
        if q.name == name:
            # The model is not checked here: `models` says what a worker must
            # have installed, not the only models it has, so naming the queue
            # is the submitter's way to say "its workers have mine".
            if q.kinds and kind not in q.kinds:
                raise RoutingError(
                    f"queue {name!r} does not accept kind {kind!r}; "
                    f"it takes only {', '.join(q.kinds)}"
                )
            return name
    declared = ", ".join(q.name for q in queues) or "none"
    raise RoutingError(f"unknown queue {name!r}; declared queues: {declared}")


def _describe(queues: Sequence[QueueConfig]) -> str:
    """``gpu-high (kinds: any; models: any), ...`` for error messages."""
    if not queues:
        return "none"
    return ", ".join(
        f"{q.name} (kinds: {', '.join(q.kinds) or 'any'}; models: {', '.join(q.models) or 'any'})"
        for q in queues
    )


async def backlog(log: EventLog, queues: Sequence[str]) -> dict[str, int]:
    """Entries waiting or running per queue, in one round trip: work streams
    keep only entries not yet acked, so their lengths add up to exactly that."""
    k = log.keys
    names = [
        (q, k.work(p, q, prio))
        for q in queues
        for p in k.all_partitions()
        for prio in PRIORITIES_HIGH_FIRST
    ]
    async with log.redis.pipeline(transaction=False) as pipe:
        for _, stream in names:
            pipe.xlen(stream)
        lengths = await pipe.execute()
    out: dict[str, int] = dict.fromkeys(queues, 0)
    for (q, _), n in zip(names, lengths):
        out[q] += n
    return out
