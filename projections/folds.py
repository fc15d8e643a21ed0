"""Pure folds of task events into task and queue views.

Each fold is ``(view | None, ..., entry_id, event) -> view``, in the manner of
eventsourcing's aggregate6: no I/O, no clock, no mutation of its arguments,
one ``match`` on the event union. Node folds are in :mod:`projections.nodes`,
stats folds in :mod:`projections.stats`, the whole-log fold in
:mod:`projections.replay`.

Conventions every fold follows, so a runner can drive them without thinking:

- **Idempotence by entry id.** A fold returns the view unchanged for an entry
  whose id is not newer than the last one it applied from the same stream.
  Ids are Redis stream ids ``"<ms>-<seq>"``, compared as number pairs. A task
  lives in one partition stream, so ``TaskView`` keeps one ``last_event_id``
  and :func:`fold_task` takes no stream. Node, queue and stats views are fed
  from several independent streams (the node stream, every partition), so
  they keep ``last_ids: {stream: id}`` and their folds take ``stream``.
- **The task before the event.** Queue, node-from-task and stats folds take
  ``task_before``: the task view as it stood *before* this entry (``None``
  for a new task). They derive the task's status change from it with the same
  rule as :func:`fold_task` (:func:`step`), so counts always agree with task
  views. The runner must hand over the pre-entry view; if its task view was
  already written for this entry while the queue view was not, it must keep
  (or recompute) the old one: no fold can undo an event.
- **Routing.** :func:`queue_of`, :func:`projections.nodes.nodes_of` and
  :func:`projections.stats.scope_of` say which views an event touches.
- **Illegal events never raise.** A task event the transition table refuses
  leaves every field as it was, except ``illegal`` and ``history`` on the task
  view (and the ids seen); it changes no count anywhere.

**Drafts.** Queue, node and stats views hold structures that grow with the
work in flight (``waiting_since``, ``running``, per-minute buckets); copying
and re-sorting them per event made a fold cost as much as the backlog. So
those folds are written once, as *drafts* (:class:`QueueDraft`,
:class:`~projections.nodes.NodeDraft`,
:class:`~projections.stats.StatsDraft`): a working copy of one view that
takes entries one by one, changes its dicts and sets in place (copied on the
first change) and builds the frozen view once, in ``view()``, sorting and
taking minimums only then. A public fold is a draft
of one entry; :func:`projections.replay.replay` keeps one draft per view for
a whole batch. The tests check that both give the same views.
"""

from __future__ import annotations

from typing import Any

import msgspec

from eventcore.events import (
    ErrorInfo,
    TaskCancelled,
    TaskCancelRequested,
    TaskClaimed,
    TaskDeadLettered,
    TaskEvent,
    TaskFailed,
    TaskProgress,
    TaskRerouted,
    TaskResultStale,
    TaskRetryScheduled,
    TaskScheduled,
    TaskStarted,
    TaskSubmitted,
    TaskSucceeded,
    TaskTimedOut,
)
from eventcore.transitions import TERMINAL, TRANSITIONS, TaskStatus
from projections._summary import describe, history_add, keep_last, summarise_params
from projections.views import QueueView, TaskView

__all__ = [
    "HELD",
    "WAITING",
    "QueueDraft",
    "Seen",
    "TaskChange",
    "apply_task",
    "by_key",
    "change_of",
    "fold_queue",
    "fold_task",
    "id_rank",
    "is_new",
    "queue_of",
    "queues_of",
    "step",
]

S = TaskStatus
WAITING: frozenset[TaskStatus] = frozenset({S.QUEUED, S.SCHEDULED, S.RETRYING})
HELD: frozenset[TaskStatus] = frozenset({S.CLAIMED, S.RUNNING})

ILLEGAL_LIMIT = 20
WARNING_LIMIT = 20

_replace = msgspec.structs.replace
_NOTHING = -1  # below every id's rank: "no entry applied yet"


# -- ids ----------------------------------------------------------------------


def id_rank(entry_id: str) -> int:
    """A stream id as one number that orders like
    :func:`eventcore.ids.stream_id_key` (the sequence number is below 2**64);
    a number, unlike a pair, is no object for the garbage collector to track."""
    ms, _, seq = entry_id.partition("-")
    return int(ms) << 64 | int(seq or 0)


def is_new(last_id: str | None, entry_id: str) -> bool:
    """Whether ``entry_id`` comes after ``last_id`` (``None`` / ``""``: nothing applied)."""
    return not last_id or id_rank(entry_id) > id_rank(last_id)


def by_key(mapping: dict[Any, Any]) -> dict[Any, Any]:
    """``mapping`` in key order. Every dict in a view is kept so, so equal views
    encode to equal bytes whatever order the events came in."""
    return dict(sorted(mapping.items()))


class Seen:
    """A view's ``last_ids`` while a draft folds entries into it: the last id
    of each stream parsed once and compared as numbers, the dict built again
    only by :meth:`result`, sorted only if a stream was added."""

    __slots__ = ("_keys", "_latest", "ids")

    def __init__(self, ids: dict[str, str]) -> None:
        self.ids = ids
        self._keys = {stream: id_rank(entry_id) for stream, entry_id in ids.items() if entry_id}
        self._latest: dict[str, str] = {}

    def advance(self, stream: str, key: int, entry_id: str) -> bool:
        """Record entry ``entry_id`` (``key`` is its :func:`id_rank`) of ``stream``;
        ``False`` if it is not newer than the last one, which is then skipped."""
        if key <= self._keys.get(stream, _NOTHING):
            return False
        self._keys[stream] = key
        self._latest[stream] = entry_id
        return True

    @property
    def changed(self) -> bool:
        return bool(self._latest)

    def result(self) -> dict[str, str]:
        if not self._latest:
            return self.ids
        ids = {**self.ids, **self._latest}
        return ids if len(ids) == len(self.ids) else by_key(ids)


# -- task ---------------------------------------------------------------------


def step(status: TaskStatus | None, event: TaskEvent) -> tuple[TaskStatus | None, bool]:
    """The status after ``event`` and whether the event was legal; an illegal
    event leaves the status as it was."""
    after = TRANSITIONS[status].get(type(event))
    return (status, False) if after is None else (after, True)


class TaskChange(msgspec.Struct, frozen=True, gc=False):
    """One task event as the queue, node and stats folds see it, worked out
    once per entry: the task view before it, the status before, and the status
    after (``None``: the transition table refuses the event, so it moves no
    count)."""

    event: TaskEvent
    task: TaskView | None
    before: TaskStatus | None
    after: TaskStatus | None


def change_of(event: TaskEvent, task_before: TaskView | None) -> TaskChange:
    """The :class:`TaskChange` of ``event`` applied to ``task_before``."""
    before = task_before.status if task_before is not None else None
    return TaskChange(event, task_before, before, TRANSITIONS[before].get(type(event)))


def fold_task(view: TaskView | None, entry_id: str, event: TaskEvent) -> TaskView:
    """Apply one task event (entry ``entry_id`` of the task's partition stream).

    A first event that is not ``TaskSubmitted`` gives a view with status
    ``None`` and the event flagged in ``illegal`` (see :class:`TaskView`).
    """
    if view is None:
        view = TaskView(task_id=event.task_id)
    elif not is_new(view.last_event_id, entry_id):
        return view
    return apply_task(view, entry_id, event, TRANSITIONS[view.status].get(type(event)))


def apply_task(
    view: TaskView, entry_id: str, event: TaskEvent, after: TaskStatus | None
) -> TaskView:
    """:func:`fold_task` once the entry is known to be new, given the status
    after it (``None``: illegal), as :func:`change_of` works it out."""
    item = describe(entry_id, event)
    if after is None:
        where = view.status.value if view.status is not None else "none"
        note = f"event {event.type_name()} in status {where} at id {entry_id}"
        return _replace(
            view,
            illegal=keep_last(view.illegal, note, ILLEGAL_LIMIT),
            history=history_add(view.history, _replace(item, summary="illegal: " + item.summary)),
            last_event_id=entry_id,
        )
    changes = _task_changes(view, event)
    if after in TERMINAL and view.status not in TERMINAL:
        changes["finished_at"] = event.at
        started = changes.get("started_at", view.started_at)
        changes["duration"] = None if started is None else max(0.0, event.at - started)
    if after is not S.RETRYING and view.retry_at is not None:
        changes["retry_at"] = None
    if after is not S.SCHEDULED and view.run_at is not None:
        changes["run_at"] = None
    changes["status"] = after
    changes["history"] = history_add(view.history, item)
    changes["last_event_id"] = entry_id
    return _replace(view, **changes)


def _task_changes(view: TaskView, event: TaskEvent) -> dict[str, Any]:
    """The fields a legal event sets (status, history and ids are set by the caller)."""
    # The most frequent events first: every case tried is an isinstance() test.
    match event:
        case TaskProgress(attempt=attempt, progress=progress, message=message, warning=warning):
            changes: dict[str, Any] = {}
            if attempt == view.attempt:  # a late report from an older attempt moves nothing
                changes["progress"] = max(view.progress, min(1.0, max(0.0, progress)))
                if message:
                    changes["progress_message"] = message
            if warning:
                changes["warnings"] = keep_last(view.warnings, warning, WARNING_LIMIT)
            return changes
        case TaskClaimed(node=node, attempt=attempt, deliveries=deliveries):
            return {
                "node": node,
                "attempt": max(view.attempt, attempt),
                "deliveries": max(view.deliveries, deliveries),
            }
        case TaskStarted(node=node, attempt=attempt, at=at):
            return {"node": node, "attempt": max(view.attempt, attempt), "started_at": at}
        case TaskSucceeded(result=result, result_ref=result_ref):
            return {"result": result, "result_ref": result_ref, "progress": 1.0, "error": None}
        case TaskSubmitted(spec=spec, at=at):
            return {
                "kind": spec.kind,
                "queue": spec.queue,
                "priority": spec.priority,
                "tenant": spec.tenant,
                "model": spec.model,
                "params_summary": summarise_params(spec.params),
                "submitted_at": at,
            }
        case TaskScheduled(run_at=run_at):
            return {"run_at": run_at}
        case TaskCancelRequested(reason=reason):
            return {"cancel_requested": True, "cancel_reason": reason or view.cancel_reason}
        case TaskFailed(error=error):
            return {"error": error}
        case TaskCancelled(reason=reason):
            return {"cancel_reason": reason or view.cancel_reason}
        case TaskTimedOut(timeout=timeout):
            message = f"hard timeout of {timeout:g}s exceeded"
            return {"error": ErrorInfo(type="TimeoutError", message=message, retryable=False)}
        case TaskRetryScheduled(attempt=attempt, run_at=run_at, error=error):
            return {
                "attempt": max(view.attempt, attempt),
                "retry_at": run_at,
                "error": error if error is not None else view.error,
                "progress": 0.0,
                "progress_message": "",
            }
        case TaskDeadLettered(deliveries=deliveries, reason=reason):
            return {"deliveries": max(view.deliveries, deliveries), "dead_letter_reason": reason}
        case TaskResultStale():
            return {"stale_results": view.stale_results + 1}
        case TaskRerouted(to_queue=to_queue):
            return {"queue": to_queue}
    return {}


# -- queue --------------------------------------------------------------------


def queue_of(event: TaskEvent, task_before: TaskView | None) -> str | None:
    """The queue whose view ``event`` touches, or ``None`` (a task never
    submitted). For a ``TaskRerouted`` it is the queue the task leaves; the
    one it joins is touched too (:func:`queues_of`)."""
    if task_before is not None and task_before.queue:
        return task_before.queue
    if type(event) is TaskSubmitted:
        return event.spec.queue
    return None


def queues_of(event: TaskEvent, task_before: TaskView | None) -> tuple[str, ...]:
    """Every queue whose view ``event`` touches: :func:`queue_of`, and for a
    legal ``TaskRerouted`` the queue the task moves to (an illegal one
    touches no view but the task's)."""
    queue = queue_of(event, task_before)
    if queue is None:
        return ()
    if type(event) is TaskRerouted and event.to_queue != queue and _moves(task_before):
        return (queue, event.to_queue)
    return (queue,)


def _moves(task_before: TaskView | None) -> bool:
    """Whether a ``TaskRerouted`` is legal after ``task_before``."""
    status = task_before.status if task_before is not None else None
    return TaskRerouted in TRANSITIONS[status]


def fold_queue(
    view: QueueView | None,
    stream: str,
    entry_id: str,
    event: TaskEvent,
    task_before: TaskView | None,
    *,
    queue: str | None = None,
) -> QueueView | None:
    """Apply one task event to a queue's view (``None``: start one, for
    ``queue``, by default :func:`queue_of` the event).

    Returns ``view`` unchanged (possibly ``None``) when the event belongs to
    other queues or to no queue (:func:`queues_of`).
    """
    touched = queues_of(event, task_before)
    name = view.queue if view is not None else (queue if queue is not None else None)
    if not touched or (name is not None and name not in touched):
        return view
    draft = QueueDraft(view if view is not None else QueueView(queue=name or touched[0]))
    draft.apply(stream, id_rank(entry_id), entry_id, change_of(event, task_before))
    return draft.view()


_QUEUE_COUNTS = (
    "submitted",
    "waiting",
    "in_flight",
    "moved_in",
    "moved_out",
    *sorted(s.value for s in TERMINAL),
)
_TERMINAL_FIELD = {s: s.value for s in TERMINAL}  # faster than .value


class QueueDraft:
    """A queue view being folded (see the module's notes on drafts).

    ``oldest_waiting_at`` is kept as a running minimum: a task joining the
    waiting set can only lower it, and it is looked for again among the
    waiting tasks (once, in :meth:`view`) only if the task that held it left.
    """

    __slots__ = ("_oldest_lost", "_own", "_sorted", "base", "counts", "oldest", "seen", "waiting")

    def __init__(self, view: QueueView) -> None:
        self.base = view
        self.seen = Seen(view.last_ids)
        self.counts: dict[str, int] | None = None  # set by the first status change
        self.waiting = view.waiting_since
        self.oldest = view.oldest_waiting_at
        self._own = self._oldest_lost = False
        self._sorted = True

    def apply(self, stream: str, key: int, entry_id: str, change: TaskChange) -> None:
        """Fold one entry of ``stream`` (``key`` is its :func:`id_rank`) of this queue."""
        if not self.seen.advance(stream, key, entry_id):
            return
        event, task, before, after = change.event, change.task, change.before, change.after
        if type(event) is TaskRerouted and after is not None:
            self._move(event, task)
            return
        if after is None or after is before:
            return
        counts = self._counts()
        if type(event) is TaskSubmitted:
            counts["submitted"] += 1
        counts["in_flight"] += (after in HELD) - (before in HELD)
        if after in TERMINAL:
            counts[_TERMINAL_FIELD[after]] += 1
        if after in WAITING:
            counts["waiting"] += before not in WAITING
            submitted_at = task.submitted_at if task is not None else None
            self._wait(event.task_id, submitted_at if submitted_at is not None else event.at)
        else:
            counts["waiting"] -= before in WAITING
            self._leave(event.task_id)

    def _counts(self) -> dict[str, int]:
        if self.counts is None:
            self.counts = {f: getattr(self.base, f) for f in _QUEUE_COUNTS}
        return self.counts

    def _move(self, event: TaskRerouted, task: TaskView | None) -> None:
        """A waiting task leaves its queue for ``event.to_queue``: it stops
        waiting in one and starts waiting in the other, with its submit time."""
        left = task.queue if task is not None and task.queue else event.from_queue
        here = self.base.queue
        if left == event.to_queue:
            return
        counts = self._counts()
        if here == left:
            counts["waiting"] -= 1
            counts["moved_out"] += 1
            self._leave(event.task_id)
        elif here == event.to_queue:
            counts["waiting"] += 1
            counts["moved_in"] += 1
            submitted_at = task.submitted_at if task is not None else None
            self._wait(event.task_id, submitted_at if submitted_at is not None else event.at)

    def _own_waiting(self) -> dict[str, float]:
        if not self._own:
            self.waiting, self._own = dict(self.waiting), True
        return self.waiting

    def _wait(self, task_id: str, since: float) -> None:
        waiting = self._own_waiting()
        old = waiting.get(task_id)
        if old is None:
            # Task ids mostly grow (UUIDv7), so a new one usually goes last.
            if self._sorted and waiting and task_id < next(reversed(waiting)):
                self._sorted = False
        elif old == self.oldest:
            self._oldest_lost = True
        waiting[task_id] = since
        if not self._oldest_lost and (self.oldest is None or since < self.oldest):
            self.oldest = since

    def _leave(self, task_id: str) -> None:
        if task_id in self.waiting:
            if self._own_waiting().pop(task_id) == self.oldest:
                self._oldest_lost = True

    def view(self) -> QueueView:
        """The view with every entry folded so far."""
        changes: dict[str, Any] = {}
        if self.seen.changed:
            changes["last_ids"] = self.seen.result()
        if self.counts is not None:
            changes.update(self.counts)
            waiting = self.waiting if self._sorted else by_key(self.waiting)
            changes["waiting_since"] = waiting
            if self._oldest_lost:
                self.oldest = min(waiting.values(), default=None)
                self._oldest_lost = False
            changes["oldest_waiting_at"] = self.oldest
        return _replace(self.base, **changes) if changes else self.base
