"""Task events: one class per fact in a task's life.

``TaskSubmitted`` → (``TaskScheduled``) → ``TaskClaimed`` → ``TaskStarted`` →
``TaskProgress``* → one terminal event. ``TaskRetryScheduled`` sends the task
back to the queue; ``TaskCancelRequested`` and ``TaskResultStale`` may come at
any point and never change the outcome; ``TaskRerouted`` moves a waiting
task to another queue without changing its status. The legal moves are in
:mod:`eventcore.transitions`.
"""

from __future__ import annotations

import enum
from typing import Any

import msgspec

from eventcore.events._base import Event


class Priority(enum.StrEnum):
    """Priority levels. Each queue has one work stream per level, read highest first."""

    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


PRIORITIES_HIGH_FIRST: tuple[Priority, ...] = (Priority.HIGH, Priority.NORMAL, Priority.LOW)


class Backoff(enum.StrEnum):
    FIXED = "fixed"
    LINEAR = "linear"
    EXPONENTIAL = "exponential"


class RetryPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """How a failed attempt is retried.

    ``delay`` is the base delay in seconds; ``cap`` bounds any delay; ``jitter``
    is the fraction of the delay that is randomised (0 = none, 1 = full).
    ``retry_on`` lists error type names that retry; empty means every error not
    marked non-retryable.
    """

    max_retries: int = 3
    backoff: Backoff = Backoff.EXPONENTIAL
    delay: float = 1.0
    cap: float = 300.0
    jitter: float = 0.2
    retry_on: tuple[str, ...] = ()


class ErrorInfo(msgspec.Struct, frozen=True, kw_only=True):
    """An error raised by a handler, as recorded in the log."""

    type: str
    message: str
    traceback: str = ""
    retryable: bool = True


class TaskSpec(msgspec.Struct, frozen=True, kw_only=True):
    """What to run and how: everything a submitter says about a task.

    ``None`` for ``retry``, the timeouts and ``max_deliveries`` means "the
    queue's default from config".
    """

    kind: str
    queue: str
    priority: Priority = Priority.NORMAL
    params: dict[str, Any] = {}
    tenant: str = ""
    model: str | None = None
    retry: RetryPolicy | None = None
    soft_timeout: float | None = None
    hard_timeout: float | None = None
    max_deliveries: int | None = None


class TaskSubmitted(Event, frozen=True, tag="task.submitted"):
    """A task was accepted. Written together with its work entry."""

    task_id: str
    spec: TaskSpec
    idempotency_key: str | None = None
    # True when the router chose ``spec.queue``; False when the submitter named
    # the queue (pinned), and in events written before this field existed,
    # whose origin is unknown. Only a routed task is ever moved to another queue.
    routed: bool = False


class TaskScheduled(Event, frozen=True, tag="task.scheduled"):
    """A submitted task waits in the delayed set until ``run_at``."""

    task_id: str
    run_at: float


class TaskClaimed(Event, frozen=True, tag="task.claimed"):
    """A worker took the task's work entry from its queue."""

    task_id: str
    node: str
    attempt: int
    deliveries: int
    entry_id: str


class TaskStarted(Event, frozen=True, tag="task.started"):
    """The handler began running."""

    task_id: str
    node: str
    attempt: int
    pid: int | None = None


class TaskProgress(Event, frozen=True, tag="task.progress"):
    """Progress reported by the handler (0..1), or a warning such as a soft timeout.

    ``node`` and ``delivery`` name the delivery that wrote it (the node and the
    ``deliveries`` of its ``TaskClaimed``); events written before they existed
    decode with ``""`` and ``0``.
    """

    task_id: str
    attempt: int
    progress: float
    message: str = ""
    warning: str | None = None
    node: str = ""
    delivery: int = 0


class TaskCancelRequested(Event, frozen=True, tag="task.cancel_requested"):
    """Someone asked for the task to be cancelled."""

    task_id: str
    reason: str = ""
    by: str = ""


class TaskSucceeded(Event, frozen=True, tag="task.succeeded"):
    """The handler returned. ``result`` is small JSON-like data; large results are blobs."""

    task_id: str
    node: str
    attempt: int
    result: Any = None
    result_ref: str | None = None
    duration: float = 0.0


class TaskFailed(Event, frozen=True, tag="task.failed"):
    """The task failed for good (not retryable, or no retries left)."""

    task_id: str
    node: str
    attempt: int
    error: ErrorInfo


class TaskCancelled(Event, frozen=True, tag="task.cancelled"):
    """The task was cancelled: before it ran, or while it ran."""

    task_id: str
    node: str | None = None
    reason: str = ""


class TaskTimedOut(Event, frozen=True, tag="task.timed_out"):
    """The handler ran past its hard timeout and was killed; no retry follows."""

    task_id: str
    node: str
    attempt: int
    timeout: float


class TaskRetryScheduled(Event, frozen=True, tag="task.retry_scheduled"):
    """An attempt failed and the task will run again (``attempt``) at ``run_at``."""

    task_id: str
    attempt: int
    run_at: float
    delay: float
    error: ErrorInfo | None = None


class TaskDeadLettered(Event, frozen=True, tag="task.dead_lettered"):
    """The task's entry was delivered too often (or could not run) and was parked."""

    task_id: str
    deliveries: int
    reason: str
    entry_id: str = ""
    node: str | None = None


class TaskRerouted(Event, frozen=True, tag="task.rerouted"):
    """A routed task waiting on a queue no live node reads was moved, with its
    work entry, to ``to_queue``, which a live node reads. Changes no status."""

    task_id: str
    from_queue: str
    to_queue: str
    reason: str = ""
    by: str = ""  # the node that moved it


class TaskResultStale(Event, frozen=True, tag="task.result_stale"):
    """A late outcome from a worker that no longer held the task; changes nothing."""

    task_id: str
    node: str
    attempt: int
    outcome: str
    reason: str


TaskEvent = (
    TaskSubmitted
    | TaskScheduled
    | TaskClaimed
    | TaskStarted
    | TaskProgress
    | TaskCancelRequested
    | TaskSucceeded
    | TaskFailed
    | TaskCancelled
    | TaskTimedOut
    | TaskRetryScheduled
    | TaskDeadLettered
    | TaskResultStale
    | TaskRerouted
)

TASK_EVENT_TYPES: tuple[type[Event], ...] = TaskEvent.__args__  # type: ignore[attr-defined]

TERMINAL_EVENT_TYPES: tuple[type[Event], ...] = (
    TaskSucceeded,
    TaskFailed,
    TaskCancelled,
    TaskTimedOut,
    TaskDeadLettered,
)
