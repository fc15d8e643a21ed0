"""Keeping task views small: params summaries, history lines, bounded tuples."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from eventcore.events import (
    TASK_EVENT_TYPES,
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
from projections.views import HistoryItem

STRING_LIMIT = 200
KEY_LIMIT = 32
SMALL_CONTAINER = 8
HISTORY_LIMIT = 100
_PROGRESS = TaskProgress.type_name()
_TAGS = {t: t.type_name() for t in TASK_EVENT_TYPES}


def _cut(text: str, limit: int = STRING_LIMIT) -> str:
    return text if len(text) <= limit else text[:limit] + f"… ({len(text)} chars)"


_SCALARS = (bool, int, float, str)


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, _SCALARS)


def _small(value: Any, top: bool) -> Any:
    """A value as it appears in a params summary: scalars kept (long strings
    cut), a small flat container kept at the top level, anything else named."""
    if isinstance(value, str):
        return _cut(value)
    if _scalar(value):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(value)} bytes>"
    if isinstance(value, (list, tuple)):
        if top and len(value) <= SMALL_CONTAINER and all(map(_scalar, value)):
            return [_small(v, False) for v in value]
        return f"<list of {len(value)}>"
    if isinstance(value, Mapping):
        if top and len(value) <= SMALL_CONTAINER and all(map(_scalar, value.values())):
            return {str(k): _small(v, False) for k, v in value.items()}
        return f"<dict of {len(value)}>"
    return f"<{type(value).__name__}>"


def summarise_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Task params cut down for the task view: at most ``KEY_LIMIT`` keys, strings
    over ``STRING_LIMIT`` chars cut, nested or large containers replaced by
    ``"<list of n>"`` / ``"<dict of n>"``, binary data by ``"<n bytes>"``."""
    out: dict[str, Any] = {}
    for i, (key, value) in enumerate(params.items()):
        if i == KEY_LIMIT:
            out["…"] = f"{len(params) - KEY_LIMIT} more keys"
            break
        out[_cut(str(key), 64)] = _small(value, True)
    return out


def keep_last(items: tuple[str, ...], item: str, limit: int) -> tuple[str, ...]:
    """``items + (item,)``, keeping the last ``limit``."""
    return (*items, item)[-limit:]


def history_add(history: tuple[HistoryItem, ...], item: HistoryItem) -> tuple[HistoryItem, ...]:
    """Append to a task timeline, kept small: a progress line replaces the
    progress line just before it, and past ``HISTORY_LIMIT`` lines the oldest
    after the first (the submission) are dropped."""
    if history and item.type == _PROGRESS and history[-1].type == _PROGRESS:
        history = history[:-1]
    history = (*history, item)
    if len(history) > HISTORY_LIMIT:
        history = (history[0], *history[len(history) - HISTORY_LIMIT + 1 :])
    return history


def describe(entry_id: str, event: TaskEvent) -> HistoryItem:
    """The timeline line for one event."""
    return HistoryItem(id=entry_id, type=_TAGS[type(event)], at=event.at, summary=_summary(event))


def _summary(event: TaskEvent) -> str:
    # The most frequent events first: every case tried is an isinstance() test.
    match event:
        case TaskProgress(progress=progress, message=message, warning=warning):
            text = f"{progress:.0%}" + (f" {_cut(message, 80)}" if message else "")
            return text + (f" warning: {_cut(warning, 80)}" if warning else "")
        case TaskClaimed(node=node, attempt=attempt, deliveries=deliveries):
            return f"claimed by {node} (attempt {attempt}, delivery {deliveries})"
        case TaskStarted(node=node, attempt=attempt):
            return f"started on {node} (attempt {attempt})"
        case TaskSucceeded(node=node):
            return f"succeeded on {node}"
        case TaskSubmitted(spec=spec):
            return f"submitted {spec.kind} to {spec.queue} ({spec.priority.value})"
        case TaskScheduled(run_at=run_at):
            return f"scheduled for {run_at:.3f}"
        case TaskCancelRequested(reason=reason, by=by):
            return "cancel requested" + (f" by {by}" if by else "") + _reason(reason)
        case TaskFailed(node=node, error=error):
            return f"failed on {node}: {error.type}: {_cut(error.message, 80)}"
        case TaskCancelled(reason=reason):
            return "cancelled" + _reason(reason)
        case TaskTimedOut(node=node, timeout=timeout):
            return f"timed out on {node} after {timeout:g}s"
        case TaskRetryScheduled(attempt=attempt, delay=delay):
            return f"retry as attempt {attempt} in {delay:g}s"
        case TaskDeadLettered(deliveries=deliveries, reason=reason):
            return f"dead-lettered after {deliveries} deliveries" + _reason(reason)
        case TaskResultStale(node=node, outcome=outcome):
            return f"stale {outcome} from {node}"
        case TaskRerouted(from_queue=old, to_queue=new, reason=reason):
            return f"moved from {old} to {new}" + _reason(reason)
    return ""


def _reason(reason: str) -> str:
    return f": {_cut(reason, 80)}" if reason else ""
