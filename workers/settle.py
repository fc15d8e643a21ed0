"""The worker's settle queue: outcomes wait here and go out through the log's
``settle`` script in batches, one round trip per batch.

A batch is kept until it is written: on this object, not in the loop that
writes it, so a loop restarted after an error (Redis away, a bug) picks the
same batch up again. A written batch gives its entries' slots back through
the ``release`` callback the worker hands in; a stale answer becomes a
``TaskResultStale``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from eventcore.events import Event, TaskResultStale
from eventcore.log import EventLog, Settlement, SettleResult
from eventcore.log.groups import WorkEntry
from workers.faults import crash_point
from workers.writes import persist

__all__ = ["SettleQueue", "describe"]

logger = logging.getLogger(__name__)


class SettleQueue:
    """Outcomes waiting to be settled, and the batch being written.

    ``release`` gives the slots of settled (or abandoned) entries back;
    ``stopping`` says when to give up on a batch Redis will not take (its
    entries then stay pending and are reclaimed after their lease).
    """

    def __init__(
        self,
        log: EventLog,
        node: str,
        *,
        batch_size: int,
        release: Callable[[list[WorkEntry]], None],
        stopping: Callable[[], bool],
    ) -> None:
        self.log = log
        self.node = node
        self.batch_size = batch_size
        self._release = release
        self._stopping = stopping
        self.written = 0  # entries settled
        self._queue: asyncio.Queue[Settlement] = asyncio.Queue()
        # The batch being written; kept here, not in the loop, so a restarted
        # settle loop picks it up again.
        self._settling: list[Settlement] = []
        self._failing = False  # the last try to write a batch failed

    def put(self, entry: WorkEntry, *events: Event) -> None:
        """Queue the end of a held entry: its events, the last one deciding."""
        self._queue.put_nowait(Settlement(entry, events))

    @property
    def busy(self) -> bool:
        """Whether outcomes wait or a batch is being written."""
        return not self._queue.empty() or bool(self._settling)

    @property
    def failing(self) -> bool:
        """Whether the last try to write a batch failed (Redis away)."""
        return self._failing

    def take_unwritten(self) -> list[Settlement]:
        """Every outcome not yet written, the batch in hand first, for a worker
        that stops; the queue is left empty."""
        left = list(self._settling)
        while not self._queue.empty():
            left.append(self._queue.get_nowait())
        return left

    async def run(self) -> None:
        """The settle loop: write batch after batch until stopping."""
        while not self._stopping():
            if not self._settling:
                batch = [await self._queue.get()]
                while not self._queue.empty() and len(batch) < self.batch_size:
                    batch.append(self._queue.get_nowait())
                self._settling = batch
            await self._write_settlements(self._settling)
            self._settling = []

    async def _write_settlements(self, batch: list[Settlement]) -> None:
        """Write one batch, retrying through a Redis outage; then give its slots back.

        A try whose reply was lost may have been written: the retry then finds
        the entries gone and answers stale, writing nothing (see settle), so a
        batch is never written twice."""
        crash_point("after_result_before_ack")
        tries = 0

        async def write() -> list[SettleResult]:
            nonlocal tries
            tries += 1
            try:
                results = await self.log.settle(self.node, batch)
            except BaseException:
                self._failing = True
                raise
            self._failing = False
            return results

        try:
            written, results = await persist(
                f"the outcomes of {len(batch)} tasks ({describe(batch)})",
                write,
                stop=self._stopping,
            )
        except Exception:  # not Redis being away: a bad item; settle them one by one
            if len(batch) == 1:
                logger.exception(
                    "could not settle task %s (%s); its entry stays pending and runs again "
                    "after its lease",
                    batch[0].entry.task_id,
                    describe(batch),
                )
                self._release([batch[0].entry])
                return
            logger.exception("settling %d outcomes failed; settling them one by one", len(batch))
            for item in batch:
                await self._write_settlements([item])
            return
        if not written or results is None:
            return  # stopping: the entries stay pending for reclaim (persist logged it)
        self.written += len(batch)
        self._release([s.entry for s in batch])
        stale = []
        for s, r in zip(batch, results):
            if r.ok:
                continue
            if tries > 1 and "no longer pending" in r.stale_reason:
                # Most likely written by a try whose reply was lost.
                logger.info("task %s: settled by an earlier try", s.entry.task_id)
                continue
            stale.append(
                TaskResultStale(
                    task_id=s.entry.task_id,
                    node=self.node,
                    attempt=s.entry.attempt,
                    outcome=s.events[-1].type_name(),
                    reason=r.stale_reason,
                )
            )
        if stale:
            logger.warning("%d stale results (lease lost or already ended)", len(stale))
            # An annotation: one try, and a log line if it is lost.
            await persist(
                f"task.result_stale of {len(stale)} tasks "
                f"({', '.join(e.task_id for e in stale[:5])})",
                lambda: self.log.append_many(stale),
                deadline=time.monotonic(),
            )


def describe(batch: list[Settlement], most: int = 5) -> str:
    """A few items of a batch, for a log line: ``task id: outcome``."""
    shown = ", ".join(f"{s.entry.task_id}: {s.events[-1].type_name()}" for s in batch[:most])
    return shown + (f" and {len(batch) - most} more" if len(batch) > most else "")
