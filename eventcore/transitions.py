"""The task lifecycle as data: which event may follow which status.

Both sides use this one table: workers refuse illegal moves before writing,
projections flag them on the view instead of crashing. ``TaskCancelRequested``
and ``TaskResultStale`` are annotations: they are recorded but never change
the status (``TaskResultStale`` is allowed even after the end, which is the
point of it). ``TaskRerouted`` is one too as far as the status goes: it moves
a waiting task to another queue, and the task keeps waiting.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from eventcore.errors import IllegalTransition
from eventcore.events import (
    Event,
    TaskCancelled,
    TaskCancelRequested,
    TaskClaimed,
    TaskDeadLettered,
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

__all__ = [
    "ANNOTATIONS",
    "TERMINAL",
    "TRANSITIONS",
    "TaskStatus",
    "is_legal",
    "next_status",
]


class TaskStatus(enum.StrEnum):
    """A task's status, always derived from its events, never written by hand."""

    QUEUED = "queued"
    SCHEDULED = "scheduled"
    CLAIMED = "claimed"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    DEAD_LETTERED = "dead_lettered"


S = TaskStatus
TERMINAL: frozenset[TaskStatus] = frozenset(
    {S.SUCCEEDED, S.FAILED, S.CANCELLED, S.TIMED_OUT, S.DEAD_LETTERED}
)
WAITING = (S.QUEUED, S.SCHEDULED, S.RETRYING)
HELD = (S.CLAIMED, S.RUNNING)
LIVE = (*WAITING, *HELD)

ANNOTATIONS: frozenset[type[Event]] = frozenset(
    {TaskCancelRequested, TaskResultStale, TaskRerouted}
)


# event type -> (statuses it may follow, the status it leads to; None = unchanged)
_TABLE: dict[type[Event], tuple[tuple[TaskStatus | None, ...], TaskStatus | None]] = {
    TaskSubmitted: ((None,), S.QUEUED),
    TaskScheduled: ((S.QUEUED,), S.SCHEDULED),
    # A crashed worker's entry is claimed again from CLAIMED or RUNNING.
    TaskClaimed: (LIVE, S.CLAIMED),
    TaskStarted: ((S.CLAIMED,), S.RUNNING),
    TaskProgress: ((S.RUNNING,), None),
    TaskSucceeded: ((S.RUNNING,), S.SUCCEEDED),
    # A claimed task can fail before it starts (no handler for its kind).
    TaskFailed: (HELD, S.FAILED),
    TaskTimedOut: ((S.RUNNING,), S.TIMED_OUT),
    TaskRetryScheduled: (HELD, S.RETRYING),
    TaskCancelled: (LIVE, S.CANCELLED),
    TaskDeadLettered: (LIVE, S.DEAD_LETTERED),
    TaskCancelRequested: (LIVE, None),
    TaskResultStale: ((*LIVE, *TERMINAL), None),
    # Only a task waiting for a worker moves; a claimed one stays where it is.
    TaskRerouted: (WAITING, None),
}

TRANSITIONS: Mapping[TaskStatus | None, Mapping[type[Event], TaskStatus]] = {
    status: {
        event_type: (target if target is not None else status)  # type: ignore[misc]
        for event_type, (sources, target) in _TABLE.items()
        if status in sources
    }
    for status in (None, *TaskStatus)
}


def is_legal(status: TaskStatus | None, event_type: type[Event]) -> bool:
    """Whether an event of ``event_type`` may follow a task in ``status``
    (``None``: the task does not exist yet)."""
    return event_type in TRANSITIONS[status]


def next_status(status: TaskStatus | None, event: Event | type[Event]) -> TaskStatus:
    """The status after ``event``; raises :class:`IllegalTransition` if not allowed."""
    event_type = event if isinstance(event, type) else type(event)
    try:
        return TRANSITIONS[status][event_type]
    except KeyError:
        raise IllegalTransition(status, event_type.type_name()) from None
