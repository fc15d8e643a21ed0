"""Pure folds of task and node events into task, node and queue views.

Each fold is ``(view | None, ..., entry_id, event) -> view``, in the manner of
eventsourcing's aggregate6: no I/O, no clock, no mutation, one ``match`` on the
event union. Stats folds are in :mod:`projections.stats`, the whole-log
reference in :mod:`projections.replay`.

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
- **Routing.** :func:`queue_of`, :func:`nodes_of` and
  :func:`projections.stats.scope_of` say which views an event touches.
- **Illegal events never raise.** A task event the transition table refuses
  leaves every field as it was, except ``illegal`` and ``history`` on the task
  view (and the ids seen); it changes no count anywhere.
"""

from __future__ import annotations

from typing import Any

import msgspec

from eventcore.events import (
    ErrorInfo,
    NodeDraining,
    NodeEvent,
    NodeHeartbeat,
    NodeLost,
    NodePaused,
    NodeResumed,
    NodeStarted,
    NodeStopped,
    TaskCancelled,
    TaskCancelRequested,
    TaskClaimed,
    TaskDeadLettered,
    TaskEvent,
    TaskFailed,
    TaskProgress,
    TaskResultStale,
    TaskRetryScheduled,
    TaskScheduled,
    TaskStarted,
    TaskSubmitted,
    TaskSucceeded,
    TaskTimedOut,
)
from eventcore.transitions import TERMINAL, TaskStatus, is_legal, next_status
from projections._summary import describe, history_add, keep_last, summarise_params
from projections.views import NodeView, QueueView, TaskView

__all__ = [
    "HELD",
    "WAITING",
    "by_key",
    "fold_node",
    "fold_node_task",
    "fold_queue",
    "fold_task",
    "id_key",
    "is_new",
    "nodes_of",
    "queue_of",
    "step",
]

S = TaskStatus
WAITING: frozenset[TaskStatus] = frozenset({S.QUEUED, S.SCHEDULED, S.RETRYING})
HELD: frozenset[TaskStatus] = frozenset({S.CLAIMED, S.RUNNING})

ILLEGAL_LIMIT = 20
WARNING_LIMIT = 20

_replace = msgspec.structs.replace


# -- ids ----------------------------------------------------------------------


def id_key(entry_id: str) -> tuple[int, int]:
    """A stream id ``"ms-seq"`` as a pair of numbers (``"ms"`` alone means seq 0)."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def is_new(last_id: str | None, entry_id: str) -> bool:
    """Whether ``entry_id`` comes after ``last_id`` (``None`` / ``""``: nothing applied)."""
    return not last_id or id_key(entry_id) > id_key(last_id)


def by_key(mapping: dict[Any, Any]) -> dict[Any, Any]:
    """``mapping`` in key order. Every dict in a view is kept so, so equal views
    encode to equal bytes whatever order the events came in."""
    return dict(sorted(mapping.items()))


def _seen(last_ids: dict[str, str], stream: str, entry_id: str) -> dict[str, str]:
    return by_key({**last_ids, stream: entry_id})


# -- task ---------------------------------------------------------------------


def step(status: TaskStatus | None, event: TaskEvent) -> tuple[TaskStatus | None, bool]:
    """The status after ``event`` and whether the event was legal; an illegal
    event leaves the status as it was."""
    if is_legal(status, type(event)):
        return next_status(status, event), True
    return status, False


def fold_task(view: TaskView | None, entry_id: str, event: TaskEvent) -> TaskView:
    """Apply one task event (entry ``entry_id`` of the task's partition stream).

    A first event that is not ``TaskSubmitted`` gives a view with status
    ``None`` and the event flagged in ``illegal`` (see :class:`TaskView`).
    """
    if view is None:
        view = TaskView(task_id=event.task_id)
    elif not is_new(view.last_event_id, entry_id):
        return view
    status, legal = step(view.status, event)
    item = describe(entry_id, event)
    if not legal:
        where = view.status.value if view.status is not None else "none"
        note = f"event {event.type_name()} in status {where} at id {entry_id}"
        return _replace(
            view,
            illegal=keep_last(view.illegal, note, ILLEGAL_LIMIT),
            history=history_add(view.history, _replace(item, summary="illegal: " + item.summary)),
            last_event_id=entry_id,
        )
    changes = _task_changes(view, event)
    if status in TERMINAL and view.status not in TERMINAL:
        changes["finished_at"] = event.at
        started = changes.get("started_at", view.started_at)
        changes["duration"] = None if started is None else max(0.0, event.at - started)
    if status is not S.RETRYING:
        changes["retry_at"] = None
    if status is not S.SCHEDULED:
        changes["run_at"] = None
    return _replace(
        view,
        **changes,
        status=status,
        history=history_add(view.history, item),
        last_event_id=entry_id,
    )


def _task_changes(view: TaskView, event: TaskEvent) -> dict[str, Any]:
    """The fields a legal event sets (status, history and ids are set by the caller)."""
    match event:
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
        case TaskClaimed(node=node, attempt=attempt, deliveries=deliveries):
            return {
                "node": node,
                "attempt": max(view.attempt, attempt),
                "deliveries": max(view.deliveries, deliveries),
            }
        case TaskStarted(node=node, attempt=attempt, at=at):
            return {"node": node, "attempt": max(view.attempt, attempt), "started_at": at}
        case TaskProgress(attempt=attempt, progress=progress, message=message, warning=warning):
            changes: dict[str, Any] = {}
            if attempt == view.attempt:  # a late report from an older attempt moves nothing
                changes["progress"] = max(view.progress, min(1.0, max(0.0, progress)))
                if message:
                    changes["progress_message"] = message
            if warning:
                changes["warnings"] = keep_last(view.warnings, warning, WARNING_LIMIT)
            return changes
        case TaskCancelRequested(reason=reason):
            return {"cancel_requested": True, "cancel_reason": reason or view.cancel_reason}
        case TaskSucceeded(result=result, result_ref=result_ref):
            return {"result": result, "result_ref": result_ref, "progress": 1.0, "error": None}
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
    return {}


# -- queue --------------------------------------------------------------------


def queue_of(event: TaskEvent, task_before: TaskView | None) -> str | None:
    """The queue whose view ``event`` touches, or ``None`` (a task never submitted)."""
    if task_before is not None and task_before.queue:
        return task_before.queue
    if isinstance(event, TaskSubmitted):
        return event.spec.queue
    return None


def fold_queue(
    view: QueueView | None,
    stream: str,
    entry_id: str,
    event: TaskEvent,
    task_before: TaskView | None,
) -> QueueView | None:
    """Apply one task event to its queue's view (``None``: start one).

    Returns ``view`` unchanged (possibly ``None``) when the event belongs to
    another queue or to no queue (:func:`queue_of`).
    """
    queue = queue_of(event, task_before)
    if queue is None or (view is not None and view.queue != queue):
        return view
    if view is None:
        view = QueueView(queue=queue)
    elif not is_new(view.last_ids.get(stream), entry_id):
        return view
    before = task_before.status if task_before is not None else None
    after, legal = step(before, event)
    changes: dict[str, Any] = {"last_ids": _seen(view.last_ids, stream, entry_id)}
    if legal and after is not before:
        if isinstance(event, TaskSubmitted):
            changes["submitted"] = view.submitted + 1
        changes["waiting"] = view.waiting + (after in WAITING) - (before in WAITING)
        changes["in_flight"] = view.in_flight + (after in HELD) - (before in HELD)
        if after in TERMINAL:
            field = after.value
            changes[field] = getattr(view, field) + 1
        waiting_since = dict(view.waiting_since)
        if after in WAITING:
            submitted_at = task_before.submitted_at if task_before is not None else None
            waiting_since[event.task_id] = submitted_at if submitted_at is not None else event.at
        else:
            waiting_since.pop(event.task_id, None)
        changes["waiting_since"] = by_key(waiting_since)
        changes["oldest_waiting_at"] = min(waiting_since.values(), default=None)
    return _replace(view, **changes)


# -- node ---------------------------------------------------------------------


def fold_node(view: NodeView | None, stream: str, entry_id: str, event: NodeEvent) -> NodeView:
    """Apply one node-stream event to that node's view (``None``: start one).

    ``NodeStarted`` is a new incarnation: it replaces everything the node
    announces but keeps the task-derived counters. A heartbeat brings a
    ``lost`` (or ``unknown``) node back ``online`` (it is demonstrably alive),
    but never a ``stopped`` one; a restarted process says ``NodeStarted``.
    ``NodeResumed`` ends a pause only (draining is one way); nothing but
    ``NodeStarted`` leaves ``stopped``.
    """
    if view is None:
        view = NodeView(node=event.node)
    elif not is_new(view.last_ids.get(stream), entry_id):
        return view
    state = view.state
    changes: dict[str, Any] = {"last_ids": _seen(view.last_ids, stream, entry_id)}
    match event:
        case NodeStarted():
            state = "online"
            changes.update(
                capabilities=event.capabilities,
                queues=event.queues,
                concurrency=event.concurrency,
                host=event.host,
                pid=event.pid,
                version=event.version,
                started_at=event.at,
                state_reason="",
            )
        case NodeHeartbeat():
            if state in ("unknown", "lost"):
                state = "online"
            changes.update(
                last_heartbeat=max(event.at, view.last_heartbeat or event.at),
                load=event.load,
                free_slots=event.free_slots,
                heartbeat_running=event.running,
                memory_free_mb=event.memory_free_mb,
                gpu_memory_free_mb=event.gpu_memory_free_mb,
                warm_models=event.warm_models,
            )
        case NodePaused(by=by):
            if state not in ("draining", "stopped"):
                state, changes["state_reason"] = "paused", by
        case NodeResumed(by=by):
            if state in ("paused", "unknown", "lost"):
                state, changes["state_reason"] = "online", by
        case NodeDraining(reason=reason):
            if state != "stopped":
                state, changes["state_reason"] = "draining", reason
        case NodeStopped(reason=reason):
            state, changes["state_reason"] = "stopped", reason
        case NodeLost(noticed_by=noticed_by):
            if state != "stopped":
                state, changes["state_reason"] = "lost", f"noticed by {noticed_by}"
    if state != view.state:
        changes.update(state=state, state_since=event.at)
    return _replace(view, **changes)


def _event_node(event: TaskEvent) -> str | None:
    match event:
        case (
            TaskClaimed(node=node)
            | TaskStarted(node=node)
            | TaskSucceeded(node=node)
            | TaskFailed(node=node)
            | TaskTimedOut(node=node)
            | TaskCancelled(node=node)
            | TaskDeadLettered(node=node)
            | TaskResultStale(node=node)
        ):
            return node
    return None


def nodes_of(event: TaskEvent, task_before: TaskView | None) -> tuple[str, ...]:
    """The nodes whose views a task event touches: the node it names, and the
    node that held the task before if the event may take the task from it.
    An illegal event touches none (it changes nothing there)."""
    if not step(task_before.status if task_before is not None else None, event)[1]:
        return ()
    nodes = []
    if (named := _event_node(event)) is not None:
        nodes.append(named)
    if task_before is not None and task_before.status in HELD and task_before.node is not None:
        if task_before.node not in nodes:
            nodes.append(task_before.node)
    return tuple(nodes)


def fold_node_task(
    view: NodeView | None,
    stream: str,
    entry_id: str,
    event: TaskEvent,
    task_before: TaskView | None,
    *,
    node: str | None = None,
) -> NodeView:
    """Apply a task event to one node's view: its ``running`` set and counters.

    ``node`` names the view to start when ``view`` is ``None`` (default: the
    node the event names). A task is in ``running`` exactly while the log says
    it is claimed or running there.
    """
    if view is None:
        name = node if node is not None else _event_node(event)
        if name is None:
            raise ValueError(f"{event.type_name()} names no node: pass node=")
        view = NodeView(node=name)
    elif not is_new(view.last_ids.get(stream), entry_id):
        return view
    before = task_before.status if task_before is not None else None
    after, legal = step(before, event)
    changes: dict[str, Any] = {"last_ids": _seen(view.last_ids, stream, entry_id)}
    if legal:
        holder = _event_node(event) if isinstance(event, TaskClaimed | TaskStarted) else None
        if holder is None and task_before is not None:
            holder = task_before.node
        running = set(view.running)
        if after in HELD and holder == view.node:
            running.add(event.task_id)
        else:
            running.discard(event.task_id)
        changes["running"] = tuple(sorted(running))
        if after in TERMINAL and before not in TERMINAL and _event_node(event) == view.node:
            changes["processed"] = view.processed + 1
            if isinstance(event, TaskFailed | TaskTimedOut):
                changes["failed"] = view.failed + 1
    return _replace(view, **changes)
