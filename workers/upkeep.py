"""The worker's upkeep loops: leases, reclaim, delayed release, heartbeats.

They keep the promises that make a killed worker lose nothing: a live task's
entry never looks idle (its lease is renewed), an idle one is taken over by
whoever has a free slot, and a silent node is declared lost once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping

from eventcore.config import QueueConfig, WorkerSettings
from eventcore.events import NodeHeartbeat
from eventcore.log import EventLog, groups
from eventcore.nodes import append_node_event, last_seen, mark_lost
from workers.capabilities import free_gpu_memory_mb, free_memory_mb
from workers.running import Running
from workers.slots import Slots

__all__ = ["Upkeep"]

logger = logging.getLogger(__name__)


class Upkeep:
    """The upkeep loops of one worker, over its :class:`~workers.slots.Slots`.

    ``streams`` maps each work stream the worker reads to its queue, in the
    order they are scanned; ``settings`` gives the worker settings as they are
    now (the control channel may change them); ``stopping`` says when the
    loops end. The reclaim cursors live here, not in the loop, so a loop
    restarted after an error goes on where it was.
    """

    def __init__(
        self,
        log: EventLog,
        node: str,
        slots: Slots,
        *,
        streams: Mapping[str, QueueConfig],
        cancel_poll: float,
        gpus: bool,
        warm_models: Callable[[], tuple[str, ...]],
        settings: Callable[[], WorkerSettings],
        stopping: Callable[[], bool],
    ) -> None:
        self.log = log
        self.node = node
        self.slots = slots
        self.streams = streams
        self.cancel_poll = cancel_poll
        self.gpus = gpus
        self.warm_models = warm_models
        self.settings = settings
        self.stopping = stopping
        self.reclaim_cursors: dict[str, str] = {}  # stream -> where the next scan starts

    @property
    def lease_ms(self) -> int:
        """The shortest lease of the queues read: leases are renewed a third of it apart."""
        return min(q.lease_ms for q in self.streams.values())

    async def lease_loop(self) -> None:
        """Renew the leases of running tasks; pass on cancel requests for them."""
        last_renew = 0.0
        while not self.stopping():
            await asyncio.sleep(self.cancel_poll)
            if not self.slots.held:
                continue
            runs = list(self.slots.running.values())
            if time.monotonic() - last_renew >= self.lease_ms / 3000:
                last_renew = time.monotonic()
                await self._renew(runs)
            wanted = await self.log.cancel_requested(r.entry.task_id for r in runs)
            for task_id in wanted:
                self.slots.cancel(task_id)

    async def _renew(self, runs: list[Running]) -> None:
        """Renew the leases of every entry held (running, prefetched, or waiting
        for its settle to be written, which can take a while when Redis was
        away), stream by stream."""
        entries: dict[str, list[str]] = {}
        for entry in list(self.slots.held.values()):
            entries.setdefault(entry.stream, []).append(entry.id)
        log = self.log
        held: set[tuple[str, str]] = set()
        for stream, ids in entries.items():
            renewed = await groups.renew(log.redis, log.scripts, stream, log.group, self.node, ids)
            held |= {(stream, entry_id) for entry_id in renewed}
        for r in runs:
            if (r.entry.stream, r.entry.id) not in held and not r.lease_lost:
                r.lease_lost = True
                logger.warning(
                    "lost the lease of task %s; its result will be stale", r.entry.task_id
                )

    async def reclaim_loop(self) -> None:
        """Take over entries idle past their lease (their worker died), as room allows."""
        slots = self.slots
        while not self.stopping():
            await asyncio.sleep(self.settings().reclaim_interval)
            if slots.paused or slots.draining:
                continue
            for stream, queue in self.streams.items():
                if slots.room <= 0:
                    break
                res = await groups.autoclaim(
                    self.log.redis,
                    stream,
                    self.log.group,
                    self.node,
                    queue.lease_ms,
                    start=self.reclaim_cursors.get(stream, "0-0"),
                    count=slots.room,
                )
                self.reclaim_cursors[stream] = res.next_start
                # Entries this worker already holds looked idle because their
                # lease could not be renewed (Redis was away): they still run
                # here, so they are not started a second time.
                mine = [e for e in res.entries if slots.holds(e)]
                for entry in mine:
                    logger.info("task %s: lease renewed by reclaim; it runs here", entry.task_id)
                new = [e for e in res.entries if not slots.holds(e)]
                if new:
                    flags = await self.log.cancel_requested(e.task_id for e in new)
                    for entry in new:
                        entry.cancel_requested = entry.task_id in flags
                        slots.dispatch(entry)

    async def release_loop(self) -> None:
        """Move due delayed tasks (retries, scheduled) back to their queues."""
        while not self.stopping():
            await self.log.release_due()
            await asyncio.sleep(self.settings().release_interval)

    def heartbeat(self) -> NodeHeartbeat:
        """This node's load as of now: the tasks it runs and its free slots."""
        slots = self.slots
        return NodeHeartbeat(
            node=self.node,
            running=tuple(slots.running),
            free_slots=slots.free,
            load=slots.inflight / max(1, slots.size),
            memory_free_mb=free_memory_mb(),
            gpu_memory_free_mb=free_gpu_memory_mb() if self.gpus else (),
            warm_models=self.warm_models(),
        )

    async def heartbeat_loop(self) -> None:
        """Announce this node's load; declare nodes silent too long lost (once)."""
        ws = self.settings()
        while not self.stopping():
            await append_node_event(self.log, self.heartbeat())
            now = time.time()
            for node, seen in (await last_seen(self.log)).items():
                if node != self.node and now - seen > ws.heartbeat_timeout:
                    if await mark_lost(
                        self.log,
                        node,
                        silent_for=ws.heartbeat_timeout,
                        noticed_by=self.node,
                        now=now,
                    ):
                        logger.warning("node %s is lost (silent for %.0fs)", node, now - seen)
            await asyncio.sleep(ws.heartbeat_interval)
