"""Writes the worker must not lose: retried with jittered backoff while Redis
is away, every failure logged with what it was writing.

The Redis client already retries a dropped connection a few times; these
loops are the layer above it, for outages longer than the client's retries
(a restart, a frozen server). A write that is given up on (the deadline
passed) is logged as lost, naming what it carried.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.exceptions import (
    ClusterDownError,
    ConnectionError,
    MasterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["backoff", "is_transient", "persist"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

BASE = 0.1
CAP = 2.0
# Redis away or refusing for now: a dropped connection, a timeout, a server
# loading its AOF (a ConnectionError), a replica, memory or disk trouble.
# Anything else (a script's argument check, a Lua error) is a bug that a
# retry cannot mend.
TRANSIENT: tuple[type[BaseException], ...] = (
    ConnectionError,
    RedisTimeoutError,
    OSError,
    ReadOnlyError,
    OutOfMemoryError,
    TryAgainError,
    ClusterDownError,
    MasterDownError,
)


def is_transient(exc: BaseException) -> bool:
    """Whether Redis may accept the same write later."""
    if isinstance(exc, TRANSIENT):
        return True
    # MISCONF: the server cannot persist (disk full, a failed AOF fsync).
    return isinstance(exc, ResponseError) and str(exc).startswith("MISCONF")


def backoff(failures: int, rand: float, *, base: float = BASE, cap: float = CAP) -> float:
    """The wait after ``failures`` failed tries in a row: exponential from
    ``base``, capped at ``cap``, with "equal jitter" (half fixed, half random)
    so workers that lost Redis together do not all come back at one instant."""
    full = min(cap, base * 2 ** max(0, failures - 1))
    return full / 2 + full / 2 * rand


async def persist(
    what: str,
    write: Callable[[], Awaitable[T]],
    *,
    deadline: float | None = None,
    stop: Callable[[], bool] = lambda: False,
) -> tuple[bool, T | None]:
    """Run ``write`` until it succeeds; returns ``(True, its result)``.

    Each failure of Redis is logged with ``what`` (the task and event types
    it carries) and retried after :func:`backoff`. It gives up, logging
    ``what`` as lost, once ``deadline`` (``time.monotonic()``) has passed or
    ``stop()`` is true, and returns ``(False, None)``; the first try is always
    made. Other errors (a bad argument: a bug) are raised at once.
    """
    failures = 0
    while True:
        try:
            return True, await write()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not is_transient(exc):
                raise
            failures += 1
            delay = backoff(failures, random.random())
            if stop() or (deadline is not None and time.monotonic() + delay > deadline):
                logger.error("gave up writing %s after %d tries: %s", what, failures, _why(exc))
                return False, None
            logger.warning(
                "writing %s failed (try %d: %s); retrying in %.2fs",
                what,
                failures,
                _why(exc),
                delay,
            )
            await asyncio.sleep(delay)


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
