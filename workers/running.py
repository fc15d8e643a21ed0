"""A task running in a child process, and the writes made while it runs.

A running task's claimed, started and progress events go out in order, each
write after the one before it ends, without holding up the worker; and only
while this delivery holds the work entry (``append_held``), so a worker that
lost its lease writes nothing beside the new owner's. The settle waits for
them all (see :mod:`workers.worker`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from eventcore.config import QueueConfig
from eventcore.events import Event, TaskProgress, TaskSubmitted
from eventcore.log import EventLog
from eventcore.log.groups import WorkEntry
from workers.executor import ChildSlot

__all__ = ["RunWrites", "Running"]

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class Running:
    """A task running in a child process."""

    entry: WorkEntry
    submitted: TaskSubmitted
    queue: QueueConfig
    slot: ChildSlot
    started: float
    lease_lost: bool = False
    cancel_requested: bool = False
    cancel_killed: bool = False
    last_progress: float = 0.0  # monotonic time of the last progress written
    fraction: float = 0.0  # the highest progress reported
    pending: list[asyncio.Task[Any]] = field(default_factory=list)
    # Claimed/started whose write failed: they go out with the next write, or
    # with the outcome, so the log never shows progress or an end without them.
    unwritten: list[Event] = field(default_factory=list)


class RunWrites:
    """The writes of running tasks on one worker: progress (throttled to one
    per ``progress_interval`` but the last), soft-timeout warnings, and
    claimed/started, each appended in order per task."""

    def __init__(self, log: EventLog, node: str, *, progress_interval: float) -> None:
        self.log = log
        self.node = node
        self.progress_interval = progress_interval

    def progress(self, run: Running, fraction: float, message: str) -> None:
        """Record a progress report of ``run``'s handler."""
        now = time.monotonic()
        if fraction < 1.0 and now - run.last_progress < self.progress_interval:
            return  # throttled: the log gets a few updates a second, not every call
        run.last_progress = now
        run.fraction = max(run.fraction, fraction)  # progress never goes back in an attempt
        event = TaskProgress(
            task_id=run.entry.task_id,
            attempt=run.entry.attempt,
            progress=run.fraction,
            message=message,
            node=self.node,
            delivery=run.entry.deliveries,
        )
        self.write(run, event)

    def write(self, run: Running, *events: Event) -> None:
        """Append a running task's events in order, without waiting: each write
        starts after the one before it ends, and the settle waits for all."""
        previous = run.pending[-1] if run.pending else None
        run.pending.append(asyncio.create_task(self._append_after(run, previous, events)))

    async def _append_after(
        self, run: Running, previous: asyncio.Task[Any] | None, events: tuple[Event, ...]
    ) -> None:
        """One write of a running task. It goes out only while this delivery
        holds the entry (``append_held``), so a worker that lost its lease
        writes no progress beside the new owner's or after the end. A failed
        write is logged; its claimed/started are kept for the next write (or
        the outcome), its progress is dropped (a later report supersedes it)."""
        if previous is not None:
            await asyncio.wait([previous])  # never raises: _append_after logs its errors
        if run.lease_lost:
            return  # known already: the entry is another's, or settled
        events = (*run.unwritten, *events)
        try:
            res = await self.log.append_held(self.node, run.entry, events)
        except Exception as exc:  # Redis away (or a bug): log what is lost, carry on
            run.unwritten = [e for e in events if not isinstance(e, TaskProgress)]
            later = " (claimed/started go out with a later write)" if run.unwritten else ""
            logger.warning(
                "could not write %s of task %s: %s: %s%s",
                ", ".join(e.type_name() for e in events),
                run.entry.task_id,
                type(exc).__name__,
                exc,
                later,
            )
            return
        run.unwritten = []
        if not res.written:
            run.lease_lost = True
            logger.warning(
                "task %s: %s not written: %s (this delivery no longer holds it)",
                run.entry.task_id,
                ", ".join(e.type_name() for e in events),
                res.not_held,
            )

    def soft_timeout(self, run: Running, soft: float) -> None:
        """Tell ``run``'s handler its soft timeout passed, and note it in the log."""
        run.slot.soft.set()
        event = TaskProgress(
            task_id=run.entry.task_id,
            attempt=run.entry.attempt,
            progress=run.fraction,
            message="",
            warning=f"soft timeout of {soft}s passed",
            node=self.node,
            delivery=run.entry.deliveries,
        )
        self.write(run, event)
