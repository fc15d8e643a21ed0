"""The worker's upkeep loops: leases, reclaim, delayed release, heartbeats.

They keep the promises that make a killed worker lose nothing: a live task's
entry never looks idle (its lease is renewed), an idle one is taken over by
whoever has a free slot, and a silent node is declared lost once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from eventcore import groups
from eventcore.events import NodeHeartbeat
from eventcore.nodes import append_node_event, last_seen, mark_lost
from workers.capabilities import free_gpu_memory_mb, free_memory_mb

if TYPE_CHECKING:
    from workers.running import Running
    from workers.worker import Worker

__all__ = ["heartbeat", "heartbeat_loop", "lease_loop", "reclaim_loop", "release_loop"]

log = logging.getLogger(__name__)


def lease_ms(worker: Worker) -> int:
    return min(q.lease_ms for q in worker.options.queues)


async def lease_loop(worker: Worker) -> None:
    """Renew the leases of running tasks; pass on cancel requests for them."""
    last_renew = 0.0
    while not worker.closing:
        await asyncio.sleep(worker.options.cancel_poll)
        if not worker.held:
            continue
        runs = list(worker.running.values())
        if time.monotonic() - last_renew >= lease_ms(worker) / 3000:
            last_renew = time.monotonic()
            await _renew(worker, runs)
        wanted = await worker.log.cancel_requested(r.entry.task_id for r in runs)
        for task_id in wanted:
            worker.cancel_running(task_id)


async def _renew(worker: Worker, runs: list[Running]) -> None:
    """Renew the leases of every entry held (running, prefetched, or waiting
    for its settle to be written, which can take a while when Redis was
    away), stream by stream."""
    entries: dict[str, list[str]] = {}
    for entry in list(worker.held.values()):
        entries.setdefault(entry.stream, []).append(entry.id)
    held: set[str] = set()
    for stream, ids in entries.items():
        held |= set(
            await groups.renew(
                worker.log.redis, worker.log.scripts, stream, worker.log.group, worker.node, ids
            )
        )
    for r in runs:
        if r.entry.id not in held and not r.lease_lost:
            r.lease_lost = True
            log.warning("lost the lease of task %s; its result will be stale", r.entry.task_id)


async def reclaim_loop(worker: Worker) -> None:
    """Take over entries idle past their lease (their worker died), as slots allow."""
    while not worker.closing:
        await asyncio.sleep(worker.settings.worker.reclaim_interval)
        if worker.paused or worker.draining:
            continue
        for streams in worker.streams.values():
            for stream in streams:
                if worker.free <= 0:
                    break
                res = await groups.autoclaim(
                    worker.log.redis,
                    stream,
                    worker.log.group,
                    worker.node,
                    worker.stream_queue[stream].lease_ms,
                    start=worker.reclaim_cursor.get(stream, "0-0"),
                    count=worker.free,
                )
                worker.reclaim_cursor[stream] = res.next_start
                # Entries this worker already holds looked idle because their
                # lease could not be renewed (Redis was away): they still run
                # here, so they are not started a second time.
                mine = [e for e in res.entries if e.id in worker.held]
                for entry in mine:
                    log.info("task %s: lease renewed by reclaim; it runs here", entry.task_id)
                new = [e for e in res.entries if e.id not in worker.held]
                if new:
                    flags = await worker.log.cancel_requested(e.task_id for e in new)
                    for entry in new:
                        entry.cancel_requested = entry.task_id in flags
                        worker.dispatch(entry)


async def release_loop(worker: Worker) -> None:
    """Move due delayed tasks (retries, scheduled) back to their queues."""
    while not worker.closing:
        await worker.log.release_due()
        await asyncio.sleep(worker.settings.worker.release_interval)


def heartbeat(worker: Worker) -> NodeHeartbeat:
    return NodeHeartbeat(
        node=worker.node,
        running=tuple(worker.running),
        free_slots=max(0, worker.concurrency - worker.inflight),
        load=worker.inflight / max(1, worker.concurrency),
        memory_free_mb=free_memory_mb(),
        gpu_memory_free_mb=free_gpu_memory_mb() if worker.options.capabilities.gpus else (),
        warm_models=worker.pool.warm_models(),
    )


async def heartbeat_loop(worker: Worker) -> None:
    """Announce this node's load; declare nodes silent too long lost (once)."""
    ws = worker.settings.worker
    while not worker.closing:
        await append_node_event(worker.log, heartbeat(worker))
        now = time.time()
        for node, seen in (await last_seen(worker.log)).items():
            if node != worker.node and now - seen > ws.heartbeat_timeout:
                if await mark_lost(
                    worker.log,
                    node,
                    silent_for=ws.heartbeat_timeout,
                    noticed_by=worker.node,
                    now=now,
                ):
                    log.warning("node %s is lost (silent for %.0fs)", node, now - seen)
        await asyncio.sleep(ws.heartbeat_interval)
