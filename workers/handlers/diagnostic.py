"""Built-in diagnostic task kinds, for smoke tests, benchmarks and fault tests."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from eventcore.errors import TaskError
from workers.context import TaskContext
from workers.handlers.registry import handler


@handler("noop", cheap=True)
def noop(ctx: TaskContext) -> Any:
    """Returns its params."""
    return ctx.params


@handler("sleep")
def sleep(ctx: TaskContext) -> Any:
    """Sleeps ``seconds`` (default 1), reporting progress in ``steps`` and
    stopping early when cancelled."""
    seconds = float(ctx.params.get("seconds", 1.0))
    steps = max(1, int(ctx.params.get("steps", 10)))
    for step in range(steps):
        ctx.check_cancelled()
        time.sleep(seconds / steps)
        ctx.progress((step + 1) / steps, f"step {step + 1}/{steps}")
    return {"slept": seconds}


@handler("fail", cheap=True)
def fail(ctx: TaskContext) -> Any:
    """Fails; retryable unless ``retryable`` is false."""
    retryable = bool(ctx.params.get("retryable", True))
    raise TaskError(str(ctx.params.get("message", "asked to fail")), non_retryable=not retryable)


@handler("crash")
def crash(ctx: TaskContext) -> Any:
    """Kills the process that runs it, as a segfaulting model would."""
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(10)  # never reached
