"""Views and log entries as table rows: pure functions, no database.

The ``tasks`` row of a task is :func:`task_row` of its task view, the same
view the Redis projector folds, so the two stores always agree; the row
keeps the whole view as JSON too (``view``), which is what the SQL projector
folds the next events onto. ``params`` is the view's params summary (long
strings cut, large values named); the whole params are in the task's
``task.submitted`` row of ``task_events``.

PostgreSQL refuses the NUL character in text and ``jsonb``; a NUL that a
client put in a string is written as U+FFFD in both databases.
"""

from __future__ import annotations

from typing import Any

import msgspec

from eventcore.events import Event, NodeEvent, TaskEvent
from projections.views import NodeView, TaskView

__all__ = [
    "json_text",
    "node_event_row",
    "node_row",
    "task_event_row",
    "task_row",
    "view_of_node",
    "view_of_task",
]

_encode = msgspec.json.encode
_NUL = "\x00"
_SUBSTITUTE = "\ufffd"
_task_decoder = msgspec.json.Decoder(TaskView)
_node_decoder = msgspec.json.Decoder(NodeView)


def clean(text: str | None) -> str | None:
    """``text`` without NUL characters (see the module docstring)."""
    if text is None or _NUL not in text:
        return text
    return text.replace(_NUL, _SUBSTITUTE)


def _cleaned(value: Any) -> Any:
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, dict):
        return {clean(k) if isinstance(k, str) else k: _cleaned(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_cleaned(v) for v in value]
    return value


def json_text(value: Any) -> str:
    """``value`` as JSON text for a JSON column, NUL-free."""
    text = _encode(value).decode()
    if "\\u0000" in text:
        text = _encode(_cleaned(msgspec.json.decode(text))).decode()
    return text


def _error_text(view: TaskView) -> str | None:
    if view.error is None:
        return None
    return clean(f"{view.error.type}: {view.error.message}")


def task_row(view: TaskView) -> dict[str, Any]:
    """The ``tasks`` row of a task view."""
    return {
        "task_id": view.task_id,
        "tenant": clean(view.tenant),
        "kind": clean(view.kind),
        "queue": clean(view.queue),
        "priority": None if view.priority is None else view.priority.value,
        "model": clean(view.model),
        "status": None if view.status is None else view.status.value,
        "node": clean(view.node),
        "attempts": view.attempt,
        "deliveries": view.deliveries,
        "submitted_at": view.submitted_at,
        "started_at": view.started_at,
        "finished_at": view.finished_at,
        "duration_s": view.duration,
        "error": _error_text(view),
        "result_ref": clean(view.result_ref),
        "params": json_text(view.params_summary),
        "last_entry_id": view.last_event_id,
        "view": json_text(view),
    }


def view_of_task(view_json: Any) -> TaskView:
    """The task view kept in a ``tasks`` row (the ``view`` column as read back:
    text on SQLite, already parsed on PostgreSQL)."""
    if isinstance(view_json, (str, bytes)):
        return _task_decoder.decode(view_json)
    return msgspec.convert(view_json, TaskView)


def node_row(view: NodeView) -> dict[str, Any]:
    """The ``nodes`` row of a node view (folded from the node stream alone)."""
    last = next(iter(view.last_ids.values()), "")  # one stream: the node stream
    return {
        "node": clean(view.node),
        "state": view.state.value,
        "state_since": view.state_since,
        "host": clean(view.host),
        "pid": view.pid,
        "version": clean(view.version),
        "queues": json_text(list(view.queues)),
        "concurrency": view.concurrency,
        "started_at": view.started_at,
        "last_heartbeat": view.last_heartbeat,
        "last_entry_id": last,
        "view": json_text(view),
    }


def view_of_node(view_json: Any) -> NodeView:
    if isinstance(view_json, (str, bytes)):
        return _node_decoder.decode(view_json)
    return msgspec.convert(view_json, NodeView)


def _event_node(event: Event) -> str | None:
    node = getattr(event, "node", None)
    return clean(node) if node else None


def task_event_row(stream: str, entry_id: str, event: TaskEvent) -> dict[str, Any]:
    """The ``task_events`` row of one entry of a partition's task log."""
    return {
        "stream": stream,
        "entry_id": entry_id,
        "task_id": event.task_id,
        "type": event.type_name(),
        "at": event.at,
        "node": _event_node(event),
        "event": json_text(event),
    }


def node_event_row(stream: str, entry_id: str, event: NodeEvent) -> dict[str, Any]:
    """The ``node_events`` row of one entry of the node stream."""
    return {
        "stream": stream,
        "entry_id": entry_id,
        "node": clean(event.node),
        "type": event.type_name(),
        "at": event.at,
        "event": json_text(event),
    }
