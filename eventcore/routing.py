"""Routing: which queue a submitted task goes to.

The rule, in full:

1. A task that names its ``queue`` goes there, provided the queue is declared
   and its ``kinds`` (if any) include the task's kind.
2. Otherwise the eligible queues are those whose ``kinds`` is empty or lists
   the kind and, when the task names a ``model``, whose ``models`` is empty or
   lists the model. The one with the least backlog wins; a tie goes to the
   queue declared first.
3. No eligible queue is an error (:class:`RoutingError`) at submit time, never
   a task that waits forever.

A catch-all queue and a queue that lists the kind are equally eligible: the
rule stays one line, and the declaration order in config is the tie-break an
operator controls.

Coming from Celery: an explicit queue is ``apply_async(queue=...)``, and the
``kinds`` of a queue play the part of ``task_routes``; what Celery lacks is
step 2, where several queues may take a task and the least loaded one does.
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

__all__ = ["RoutingError", "accepts", "backlog", "route"]


class RoutingError(EventcoreError):
    """No queue can take the task. The message says why and what to change."""


def accepts(queue: QueueConfig, kind: str, model: str | None = None) -> bool:
    """Whether ``queue`` may be chosen for a task of ``kind`` (and ``model``)."""
    if queue.kinds and kind not in queue.kinds:
        return False
    return model is None or not queue.models or model in queue.models


def route(
    kind: str,
    model: str | None,
    queue: str | None,
    queues: Sequence[QueueConfig],
    backlog: Mapping[str, int],
    served: Collection[str] | None = None,
) -> str:
    """The name of the queue a task of ``kind`` (using ``model``) goes to.

    ``queue`` is the submitter's explicit choice, if any. ``backlog`` maps queue
    names to the number of tasks waiting; a queue missing from it counts as
    empty. ``served`` names the queues live workers read: when one of them
    accepts the task, only those are considered, so a task does not wait in
    a queue nobody reads while another would run it now. Raises
    :class:`RoutingError` when the task cannot be placed.
    """
    if queue is not None:
        return _explicit(kind, queue, queues)
    if served:
        live = [q for q in queues if q.name in served and accepts(q, kind, model)]
        if live:
            queues = live
    best: QueueConfig | None = None
    for q in queues:
        # Strictly less: on a tie the queue declared first stays.
        if accepts(q, kind, model) and (
            best is None or backlog.get(q.name, 0) < backlog.get(best.name, 0)
        ):
            best = q
    if best is None:
        what = f"kind {kind!r}" + (f" with model {model!r}" if model is not None else "")
        raise RoutingError(
            f"no queue accepts {what}; declared: {_describe(queues)}. "
            "Add the kind (and model) to a queue's `kinds` (and `models`) in [[queues]], "
            "or leave them empty to accept anything"
        )
    return best.name


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


async def backlog(elog: EventLog, queues: Sequence[str]) -> dict[str, int]:
    """Entries waiting or running per queue, in one round trip: work streams
    keep only entries not yet acked, so their lengths add up to exactly that."""
    k = elog.keys
    names = [
        (q, k.work(p, q, prio))
        for q in queues
        for p in k.all_partitions()
        for prio in PRIORITIES_HIGH_FIRST
    ]
    async with elog.redis.pipeline(transaction=False) as pipe:
        for _, stream in names:
            pipe.xlen(stream)
        lengths = await pipe.execute()
    out: dict[str, int] = dict.fromkeys(queues, 0)
    for (q, _), n in zip(names, lengths):
        out[q] += n
    return out
