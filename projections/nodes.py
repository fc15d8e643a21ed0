"""Pure folds of node events, and of the task events that touch a node, into
node views.

The conventions of :mod:`projections.folds` hold here too: idempotence by
entry id per stream (``last_ids``), ``task_before`` for folds of task events,
and illegal events changing nothing. :class:`NodeDraft` is the node side of
the drafts described there. A node view takes the node stream
(:func:`fold_node`) and the task events that name the node or take a task
from it (:func:`nodes_of`, :func:`fold_node_task`).
"""

from __future__ import annotations

from typing import Any

import msgspec

from eventcore.events import (
    NodeDraining,
    NodeEvent,
    NodeHeartbeat,
    NodeLost,
    NodePaused,
    NodeResumed,
    NodeStarted,
    NodeStopped,
    TaskCancelled,
    TaskClaimed,
    TaskDeadLettered,
    TaskEvent,
    TaskFailed,
    TaskResultStale,
    TaskStarted,
    TaskSucceeded,
    TaskTimedOut,
)
from eventcore.transitions import TERMINAL
from projections.folds import HELD, Seen, TaskChange, change_of, id_rank, step
from projections.views import NodeState, NodeView, TaskView

__all__ = ["NodeDraft", "event_node", "fold_node", "fold_node_task", "nodes_of"]

_replace = msgspec.structs.replace


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
    seen = Seen(view.last_ids)
    if not seen.advance(stream, id_rank(entry_id), entry_id):
        return view
    state = view.state
    changes: dict[str, Any] = {"last_ids": seen.result()}
    match event:
        case NodeStarted():
            state = NodeState.ONLINE
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
            if state in (NodeState.UNKNOWN, NodeState.LOST):
                state = NodeState.ONLINE
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
            if state not in (NodeState.DRAINING, NodeState.STOPPED):
                state, changes["state_reason"] = NodeState.PAUSED, by
        case NodeResumed(by=by):
            if state in (NodeState.PAUSED, NodeState.UNKNOWN, NodeState.LOST):
                state, changes["state_reason"] = NodeState.ONLINE, by
        case NodeDraining(reason=reason):
            if state != NodeState.STOPPED:
                state, changes["state_reason"] = NodeState.DRAINING, reason
        case NodeStopped(reason=reason):
            state, changes["state_reason"] = NodeState.STOPPED, reason
        case NodeLost(noticed_by=noticed_by):
            if state != NodeState.STOPPED:
                state, changes["state_reason"] = NodeState.LOST, f"noticed by {noticed_by}"
    if state != view.state:
        changes.update(state=state, state_since=event.at)
    return _replace(view, **changes)


# Event types are final (one tag each), so an exact type test answers what
# isinstance() would, several times faster on msgspec structs: this is the
# hottest path of a rebuild.
_NAMES_NODE = frozenset(
    {
        TaskClaimed,
        TaskStarted,
        TaskSucceeded,
        TaskFailed,
        TaskTimedOut,
        TaskCancelled,
        TaskDeadLettered,
        TaskResultStale,
    }
)
_TAKES = frozenset({TaskClaimed, TaskStarted})  # events that put a task on their node
_FAILS = frozenset({TaskFailed, TaskTimedOut})


def event_node(event: TaskEvent) -> str | None:
    """The node a task event names, if any (the events with a ``node`` field)."""
    return event.node if type(event) in _NAMES_NODE else None  # type: ignore[union-attr]


def nodes_of(event: TaskEvent, task_before: TaskView | None) -> tuple[str, ...]:
    """The nodes whose views a task event touches: the node it names, and the
    node that held the task before if the event may take the task from it.
    An illegal event touches none (it changes nothing there)."""
    if not step(task_before.status if task_before is not None else None, event)[1]:
        return ()
    nodes = []
    if (named := event_node(event)) is not None:
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
        name = node if node is not None else event_node(event)
        if name is None:
            raise ValueError(f"{event.type_name()} names no node: pass node=")
        view = NodeView(node=name)
    draft = NodeDraft(view)
    draft.apply(stream, id_rank(entry_id), entry_id, change_of(event, task_before))
    return draft.view()


class NodeDraft:
    """The task side of a node view being folded (see the module's notes on
    drafts): ``running`` as a set, sorted into the view's tuple only when it
    changed. Node events go through :func:`fold_node` on a built view."""

    __slots__ = ("_changed", "base", "failed", "processed", "running", "seen")

    def __init__(self, view: NodeView) -> None:
        self.base = view
        self.seen = Seen(view.last_ids)
        self.running: set[str] | None = None  # made on the first legal event
        self.processed, self.failed = view.processed, view.failed
        self._changed = False

    def apply(self, stream: str, key: int, entry_id: str, change: TaskChange) -> None:
        """Fold one entry of ``stream`` (``key`` is its :func:`id_rank`) touching this node."""
        if not self.seen.advance(stream, key, entry_id):
            return
        event, task, before, after = change.event, change.task, change.before, change.after
        if after is None:
            return
        holder = event.node if type(event) in _TAKES else None  # type: ignore[union-attr]
        if holder is None and task is not None:
            holder = task.node
        running = self.running
        if running is None:
            running = self.running = set(self.base.running)
        task_id = event.task_id
        if after in HELD and holder == self.base.node:
            if task_id not in running:
                running.add(task_id)
                self._changed = True
        elif task_id in running:
            running.remove(task_id)
            self._changed = True
        if after in TERMINAL and before not in TERMINAL and event_node(event) == self.base.node:
            self.processed += 1
            if type(event) in _FAILS:
                self.failed += 1

    def view(self) -> NodeView:
        """The view with every entry folded so far."""
        changes: dict[str, Any] = {}
        if self.seen.changed:
            changes["last_ids"] = self.seen.result()
        if self._changed:
            changes["running"] = tuple(sorted(self.running or ()))
        if self.processed != self.base.processed:
            changes.update(processed=self.processed, failed=self.failed)
        return _replace(self.base, **changes) if changes else self.base
