"""How a run ended, and the events that record it: pure, no I/O.

The worker turns every run into an :class:`Outcome`, then
:func:`closing_event` decides, with the task's retry policy, which event
ends the work entry: succeeded, failed, cancelled, timed out, or a retry.
"""

from __future__ import annotations

import enum
import traceback as tb
from typing import Any

import msgspec

from eventcore.errors import TaskError
from eventcore.events import (
    ErrorInfo,
    Event,
    RetryPolicy,
    TaskCancelled,
    TaskFailed,
    TaskRetryScheduled,
    TaskSucceeded,
    TaskTimedOut,
)
from workers.context import Cancelled
from workers.retry import Retry, backoff_delay, should_retry

__all__ = ["Ending", "Outcome", "closing_event", "error_info", "outcome_of_exception"]


class Ending(enum.StrEnum):
    OK = "ok"
    ERROR = "error"
    RETRY = "retry"  # the handler asked for it (raise Retry)
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"  # killed at the hard timeout
    DIED = "died"  # the child process died under it (not killed by us)


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    ending: Ending
    result: Any = None
    error: ErrorInfo | None = None
    retry_delay: float | None = None
    duration: float = 0.0


def error_info(exc: BaseException) -> ErrorInfo:
    """An exception as the log records it, with its traceback."""
    retryable = not (isinstance(exc, TaskError) and exc.non_retryable)
    return ErrorInfo(
        type=type(exc).__name__,
        message=str(exc),
        traceback="".join(tb.format_exception(exc)),
        retryable=retryable,
    )


def outcome_of_exception(exc: BaseException, duration: float = 0.0) -> Outcome:
    match exc:
        case Retry(delay=delay):
            return Outcome(
                ending=Ending.RETRY, error=error_info(exc), retry_delay=delay, duration=duration
            )
        case Cancelled():
            return Outcome(ending=Ending.CANCELLED, error=error_info(exc), duration=duration)
        case _:
            return Outcome(ending=Ending.ERROR, error=error_info(exc), duration=duration)


def closing_event(
    outcome: Outcome,
    *,
    task_id: str,
    node: str,
    attempt: int,
    policy: RetryPolicy,
    hard_timeout: float | None,
    now: float,
    rand: float,
) -> Event:
    """The event that ends this attempt's work entry."""
    match outcome.ending:
        case Ending.OK:
            blob = outcome.result.get("blob") if isinstance(outcome.result, dict) else None
            return TaskSucceeded(
                task_id=task_id,
                node=node,
                attempt=attempt,
                result=outcome.result,
                result_ref=blob if isinstance(blob, str) else None,
                duration=outcome.duration,
            )
        case Ending.CANCELLED:
            return TaskCancelled(task_id=task_id, node=node, reason="cancelled while running")
        case _:
            pass
    error = outcome.error or ErrorInfo(type="Unknown", message="no error recorded")
    if outcome.ending is Ending.TIMEOUT:
        error = ErrorInfo(
            type="TimeoutError",
            message=f"ran past its hard timeout of {hard_timeout}s and was killed",
            retryable=True,
        )
    # A handler that raises Retry wants another attempt even if the error
    # list of the policy does not name Retry; it still counts against max_retries.
    asked = outcome.ending is Ending.RETRY
    if (asked and attempt <= policy.max_retries) or (
        not asked and should_retry(policy, error, attempt)
    ):
        delay = outcome.retry_delay
        if delay is None:
            delay = backoff_delay(policy, attempt, rand)
        return TaskRetryScheduled(
            task_id=task_id, attempt=attempt + 1, run_at=now + delay, delay=delay, error=error
        )
    if outcome.ending is Ending.TIMEOUT:
        return TaskTimedOut(task_id=task_id, node=node, attempt=attempt, timeout=hard_timeout or 0)
    return TaskFailed(task_id=task_id, node=node, attempt=attempt, error=error)
