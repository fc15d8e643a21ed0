"""Retry decisions: whether a failed attempt runs again, and after how long.

Pure functions of a task's :class:`~eventcore.events.RetryPolicy`, the error and
the attempt number; the random draw for jitter is passed in, so the scheduler
supplies ``random.random()`` and tests supply fixed values. Attempts are
1-based: attempt 1 is the first run, and a policy with ``max_retries=3`` runs a
task at most four times.

A handler that wants another go without failing raises :class:`Retry`,
optionally with its own delay.
"""

from __future__ import annotations

import math

from eventcore.errors import EventcoreError
from eventcore.events import Backoff, ErrorInfo, RetryPolicy

__all__ = ["Retry", "backoff_delay", "should_retry"]

# 2**1023 is the largest power of two a float holds. Any longer run of doublings
# is far past every cap, and computing it would overflow (OverflowError for the
# int, inf and then NaN once jitter multiplies it by zero).
_MAX_EXPONENT = 1023
_MAX_FACTOR = 2.0**_MAX_EXPONENT


class Retry(EventcoreError):
    """Raised by a handler to ask for another attempt.

    ``delay`` is the number of seconds to wait; ``None`` uses the task's retry
    policy (:func:`backoff_delay`). The attempt still counts against
    ``max_retries``.
    """

    def __init__(self, delay: float | None = None, message: str = "") -> None:
        if delay is not None and not delay >= 0:  # `not >=` also refuses NaN
            raise ValueError(f"Retry delay must be a number of seconds >= 0, got {delay!r}")
        self.delay = delay
        self.message = message
        super().__init__(message or "handler asked for a retry")


def backoff_delay(policy: RetryPolicy, attempt: int, rand: float) -> float:
    """Seconds to wait after attempt number ``attempt`` (1-based) failed.

    FIXED waits ``delay``, LINEAR ``delay * attempt``, EXPONENTIAL
    ``delay * 2 ** (attempt - 1)``; the result is capped at ``cap``. Then a
    fraction ``jitter`` of it is randomised with ``rand`` in ``[0, 1)``:
    ``d * (1 - jitter) + d * jitter * rand``, so jitter 0 gives exactly ``d``
    and jitter 1 anything in ``[0, d)``. The answer is always within
    ``[0, cap]``, whatever the attempt number.
    """
    # Clamp rather than raise: config already validates these, and a task's own
    # policy that slips through should still give a usable delay.
    base = max(policy.delay, 0.0)
    cap = max(policy.cap, 0.0)
    attempt = max(attempt, 1)
    match policy.backoff:
        case Backoff.FIXED:
            factor = 1.0
        case Backoff.LINEAR:
            factor = min(attempt, _MAX_FACTOR)
        case Backoff.EXPONENTIAL:
            factor = 2.0 ** min(attempt - 1, _MAX_EXPONENT)
    delay = min(base * factor, cap)
    if math.isinf(delay):  # only with an infinite cap; jitter would turn it into NaN
        return delay
    jitter = min(max(policy.jitter, 0.0), 1.0)
    rand = min(max(rand, 0.0), 1.0)
    jittered = delay * (1 - jitter) + delay * jitter * rand
    # Rounding can push the sum an ulp past `delay`; the cap is a promise.
    return min(max(jittered, 0.0), delay)


def should_retry(policy: RetryPolicy, error: ErrorInfo, attempt: int) -> bool:
    """Whether attempt number ``attempt`` (1-based), which failed with ``error``,
    is followed by another attempt.

    No if the error is marked non-retryable, if ``attempt > max_retries``, or if
    ``retry_on`` is non-empty and does not list ``error.type``.
    """
    if not error.retryable or attempt > policy.max_retries:
        return False
    return not policy.retry_on or error.type in policy.retry_on
