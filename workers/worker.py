"""The worker process: claims work from its queues, runs it, and ends every
entry with exactly one settle (outcome event + ack in one script).

Loops, all in one event loop:

- **claim**: takes at most as many entries as its slots have room for
  (:attr:`workers.slots.Slots.room`), highest priority first, in one script
  call per partition; when nothing is there it blocks on XREAD from the
  newest ids it saw, so new work wakes it at once.
- **settle**: outcomes queue up and go out in batches, one round trip each;
  a batch is kept and retried until it is written (Redis may be away); see
  :mod:`workers.settle`. A running task's own writes are in
  :mod:`workers.running`.
- **leases**: renews the idle time of the entries it runs, and watches for
  cancel requests of running tasks.
- **reclaim**: takes over entries idle longer than their queue's lease
  (a crashed worker's), dead-lettering those delivered too often.
- **release**: moves due delayed tasks back to their queues.
- **heartbeat**: announces load and warm models; declares silent nodes lost.
- **control**: answers commands (see :mod:`workers.commands`).

The loops share the worker's :class:`~workers.slots.Slots` (what it holds,
what runs, how much room is left) and nothing else of each other: the
upkeep loops are in :mod:`workers.upkeep`, the control channel in
:mod:`workers.commands`, and neither imports this module.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import random
import socket
import time
from typing import Any

import msgspec

from eventcore import __version__
from eventcore.config import QueueConfig, Settings
from eventcore.errors import DecodeError
from eventcore.events import (
    PRIORITIES_HIGH_FIRST,
    Capabilities,
    ErrorInfo,
    Event,
    NodeDraining,
    NodeStarted,
    NodeStopped,
    TaskCancelled,
    TaskClaimed,
    TaskDeadLettered,
    TaskFailed,
    TaskProgress,
    TaskStarted,
    TaskSubmitted,
)
from eventcore.log import EventLog, groups, spread
from eventcore.log.groups import WorkEntry
from eventcore.nodes import append_node_event
from workers import reroute
from workers.commands import Control
from workers.context import TaskContext
from workers.executor import ProcessPool
from workers.faults import crash_point
from workers.handlers import Handler, Registry
from workers.outcomes import Ending, Outcome, closing_event, outcome_of_exception
from workers.resources import ResourceConfig, Resources
from workers.running import Running, RunWrites
from workers.settle import SettleQueue, describe
from workers.slots import Slots
from workers.upkeep import Upkeep
from workers.writes import persist

__all__ = ["Worker", "WorkerOptions"]

logger = logging.getLogger(__name__)


class WorkerOptions(msgspec.Struct, kw_only=True):
    """What one worker process is: its id, queues, slots and handlers."""

    node: str
    queues: tuple[QueueConfig, ...]
    concurrency: int
    capabilities: Capabilities
    handler_specs: tuple[str, ...] = ()
    resources: ResourceConfig = ResourceConfig()
    block_ms: int = 1000
    progress_interval: float = 0.2
    cancel_poll: float = 0.25
    cancel_grace: float = 5.0
    settle_batch: int = 512
    # Entries held beyond `concurrency`, waiting for a child to come free, so
    # a child never idles for the round trips of the next claim (as Celery's
    # prefetch). Their leases are renewed like those of running tasks.
    prefetch: int = 1


def default_node_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Worker:
    """One worker process. ``await worker.run()`` until :meth:`drain` or :meth:`stop_now`."""

    def __init__(
        self, log: EventLog, settings: Settings, options: WorkerOptions, registry: Registry
    ) -> None:
        self.log = log
        self.settings = settings
        self.options = options
        self.node = options.node
        self.registry = registry
        self.pool = ProcessPool(options.concurrency, options.handler_specs, options.resources)
        self.resources = Resources(options.resources)  # for inline handlers
        self.queues = {q.name: q for q in settings.queues}
        self._draining_noted: asyncio.Future[Any] | None = None
        self.closing = False
        self.slots = Slots(
            options.concurrency,
            options.prefetch,
            dispatch=self.dispatch,
            cancel_grace=options.cancel_grace,
        )
        self.run_writes = RunWrites(log, self.node, progress_interval=options.progress_interval)
        self.settles = SettleQueue(
            log,
            self.node,
            batch_size=options.settle_batch,
            release=self.slots.release,
            stopping=lambda: self.closing,
        )
        self._stopped = asyncio.Event()
        self._immediate = False
        self._loops: list[asyncio.Task[Any]] = []
        self._children: set[asyncio.Task[Any]] = set()
        k = log.keys
        self.streams = {
            p: [k.work(p, q.name, prio) for prio in PRIORITIES_HIGH_FIRST for q in options.queues]
            for p in k.all_partitions()
        }
        self.upkeep = Upkeep(
            log,
            self.node,
            self.slots,
            streams={
                k.work(p, q.name, prio): q
                for p in k.all_partitions()
                for prio in PRIORITIES_HIGH_FIRST
                for q in options.queues
            },
            cancel_poll=options.cancel_poll,
            gpus=bool(options.capabilities.gpus),
            warm_models=self.pool.warm_models,
            settings=lambda: self.settings.worker,
            stopping=lambda: self.closing,
        )
        self.control = Control(log, self.node, self.slots, self, stopping=lambda: self.closing)

    # -- lifecycle ---------------------------------------------------------------

    async def run(self) -> None:
        """Announce the node, run every loop, and on stop drain and say goodbye."""
        for streams in self.streams.values():
            for stream in streams:
                await groups.ensure_group(self.log.redis, stream, self.log.group)
        # Before NodeStarted: no command issued after it is missed.
        await self.control.note_positions()
        caps = self.options.capabilities
        caps = msgspec.structs.replace(caps, handlers=self.registry.names())
        await append_node_event(
            self.log,
            NodeStarted(
                node=self.node,
                capabilities=caps,
                queues=tuple(q.name for q in self.options.queues),
                concurrency=self.slots.size,
                host=socket.gethostname(),
                pid=os.getpid(),
                version=__version__,
            ),
        )
        loops = [
            self._claim_loop,
            self.settles.run,
            self.upkeep.lease_loop,
            self.upkeep.reclaim_loop,
            self.upkeep.release_loop,
            lambda: reroute.reroute_loop(
                self.log, lambda: self.settings, by=self.node, stopping=lambda: self.closing
            ),
            self.upkeep.heartbeat_loop,
            self.control.run,
        ]
        self._loops = [asyncio.create_task(self._guard(loop)) for loop in loops]
        await self._stopped.wait()
        await self._finish()

    async def _guard(self, loop: Any) -> None:
        """Keep a loop alive through errors (Redis down, a bug): log loudly, retry.
        The traceback names the loop; the work it had in hand lives on objects
        that outlive it (the slots, the settle batch, the reclaim cursors, the
        control positions), so the restart goes on with it."""
        while True:
            try:
                await loop()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("worker loop failed; restarting it in 1s")
                await asyncio.sleep(1)

    @property
    def draining(self) -> bool:
        """Whether the worker is stopping: it takes no new work."""
        return self.slots.draining

    def drain(self, reason: str = "SIGTERM") -> None:
        """Stop claiming; finish what runs within the grace period, then stop."""
        if not self.slots.draining:
            grace = 0.0 if self._immediate else self.settings.worker.shutdown_grace
            event = NodeDraining(node=self.node, reason=reason)
            self._draining_noted = asyncio.ensure_future(
                persist(
                    f"node.draining of node {self.node}",
                    lambda: append_node_event(self.log, event),
                    deadline=time.monotonic() + grace,
                )
            )
        self.slots.drain()
        self._stopped.set()

    def stop_now(self) -> None:
        """Stop at once: running tasks are killed and stay pending for reclaim."""
        self._immediate = True
        self.drain("stopped at once")

    async def _finish(self) -> None:
        grace = 0.0 if self._immediate else self.settings.worker.shutdown_grace
        deadline = time.monotonic() + grace
        while self.slots.inflight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for run in list(self.slots.running.values()):
            run.slot.kill()  # its entry stays in the PEL: another worker reclaims it
        if not self._immediate:
            # Let the outcomes already known reach the log: all of them while
            # Redis answers, and while it does not, until the grace is spent.
            while self.settles.busy and (time.monotonic() < deadline or not self.settles.failing):
                await asyncio.sleep(0.01)
        left = self.settles.take_unwritten()
        if left:
            logger.error(
                "stopping with %d outcomes unwritten (%s); their entries stay pending "
                "and run again on another worker after their lease",
                len(left),
                describe(left),
            )
        # A drain or shutdown command stops the worker while its ack is being
        # written: let that write land (the issuer waits for it) before the
        # control loop is cancelled.
        acked_by = time.monotonic() + 5
        while self.control.answering and time.monotonic() < acked_by:
            await asyncio.sleep(0.01)
        self.closing = True
        for task in self._loops:
            task.cancel()
        # A cancel that lands inside a blocking read can be swallowed by the
        # Redis client; the loops also check `closing`, so they end within
        # one block period either way.
        await asyncio.wait(self._loops, timeout=5)
        self.pool.close()
        reason = "stopped at once" if self._immediate else "drained"
        if self._draining_noted is not None:
            try:
                await self._draining_noted
            except Exception:  # persist retries Redis errors; this is a bug, say so
                logger.exception("writing node.draining of node %s failed", self.node)
        stopped = NodeStopped(node=self.node, reason=reason)
        await persist(
            f"node.stopped of node {self.node}",
            lambda: append_node_event(self.log, stopped),
            deadline=deadline,
        )

    # -- control -----------------------------------------------------------------

    def resize(self, concurrency: int) -> None:
        """Run at most ``concurrency`` tasks at once from now on (set_concurrency)."""
        self.slots.resize(concurrency)
        self.pool.size = concurrency

    def reload_handlers(self) -> tuple[str, ...]:
        """Load the handlers again, here and in the child processes; their names."""
        self.registry.reload()
        self.pool.reload()
        return self.registry.names()

    # -- claim -------------------------------------------------------------------

    @property
    def processed(self) -> int:
        """Entries settled by this worker."""
        return self.settles.written

    async def _claim_loop(self) -> None:
        redis = self.log.redis
        slots = self.slots
        while not slots.draining:
            if slots.paused or slots.room <= 0:
                await slots.wait_for_room()
                continue
            got: list[WorkEntry] = []
            newest: dict[str, str] = {}
            for p, streams in self.streams.items():
                want = slots.room - len(got)
                if want <= 0:
                    break
                res = await groups.claim_new(
                    self.log.scripts,
                    self.log.keys.cancels(p),
                    streams,
                    self.log.group,
                    self.node,
                    want,
                )
                got += res.entries
                newest.update(res.last_ids)
            if got:
                for entry in got:
                    self.dispatch(entry)
                continue
            # Nothing waiting: sleep until anything newer than what we saw arrives.
            await spread.xread(redis, newest, count=1, block=self.options.block_ms)

    def dispatch(self, entry: WorkEntry) -> None:
        """Take a claimed entry in hand: settle it at once or start running it."""
        self.slots.take(entry)
        t = entry.task_id
        try:
            sub = entry.submitted
        except DecodeError as exc:
            self._settle(
                entry,
                TaskDeadLettered(
                    task_id=t,
                    deliveries=entry.deliveries,
                    reason=f"undecodable work entry: {exc.detail}",
                    entry_id=entry.id,
                    node=self.node,
                ),
            )
            return
        spec = sub.spec
        queue = self.queues.get(spec.queue) or QueueConfig(name=spec.queue)
        claimed = TaskClaimed(
            task_id=t,
            node=self.node,
            attempt=entry.attempt,
            deliveries=entry.deliveries,
            entry_id=entry.id,
        )
        max_deliveries = spec.max_deliveries or queue.max_deliveries
        if entry.deliveries > max_deliveries:
            reason = f"delivered {entry.deliveries} times (max_deliveries {max_deliveries})"
            self._settle(
                entry,
                TaskDeadLettered(
                    task_id=t,
                    deliveries=entry.deliveries,
                    reason=reason,
                    entry_id=entry.id,
                    node=self.node,
                ),
            )
            return
        if entry.cancel_requested:
            self._settle(
                entry,
                claimed,
                TaskCancelled(task_id=t, node=self.node, reason="cancelled before it ran"),
            )
            return
        handler = self.registry.get(spec.kind)
        if handler is None:
            error = ErrorInfo(
                type="UnknownKind",
                retryable=False,
                message=f"no handler for kind {spec.kind!r} on node {self.node} "
                f"(it offers: {', '.join(self.registry.names())})",
            )
            self._settle(
                entry,
                claimed,
                TaskFailed(task_id=t, node=self.node, attempt=entry.attempt, error=error),
            )
            return
        if handler.cheap:
            self._run_inline(entry, sub, queue, handler, claimed)
        else:
            task = asyncio.create_task(self._run_child(entry, sub, queue, handler, claimed))
            self._children.add(task)  # keep a reference until it ends
            task.add_done_callback(self._children.discard)

    def _run_inline(
        self,
        entry: WorkEntry,
        sub: TaskSubmitted,
        queue: QueueConfig,
        handler: Handler,
        claimed: TaskClaimed,
    ) -> None:
        t = entry.task_id
        progress: list[TaskProgress] = []
        ctx = TaskContext(
            task_id=t,
            kind=sub.spec.kind,
            params=sub.spec.params,
            attempt=entry.attempt,
            model=sub.spec.model,
            progress_sink=lambda f, m: progress.append(
                TaskProgress(
                    task_id=t,
                    attempt=entry.attempt,
                    progress=f,
                    message=m,
                    node=self.node,
                    delivery=entry.deliveries,
                )
            ),
            resources=self.resources,
        )
        started = TaskStarted(task_id=t, node=self.node, attempt=entry.attempt, pid=os.getpid())
        t0 = time.perf_counter()
        try:
            result = handler.fn(ctx)
            if inspect.isawaitable(result):
                raise TypeError(f"cheap handler {handler.name!r} must not be async")
            outcome = Outcome(ending=Ending.OK, result=result, duration=time.perf_counter() - t0)
        except Exception as exc:  # the task boundary
            outcome = outcome_of_exception(exc, time.perf_counter() - t0)
        closing = self._closing(outcome, entry, sub, queue)
        self._settle(entry, claimed, started, *progress[-1:], closing)

    async def _run_child(
        self,
        entry: WorkEntry,
        sub: TaskSubmitted,
        queue: QueueConfig,
        handler: Handler,
        claimed: TaskClaimed,
    ) -> None:
        t = entry.task_id
        spec = sub.spec
        if not await self.slots.wait_for_child(entry):
            self._abandon(entry)  # stopping: the entry stays pending for another worker
            return
        slot = self.pool.acquire()
        run = Running(entry, sub, queue, slot, time.time())
        self.slots.started(run)
        timers: list[asyncio.TimerHandle] = []
        try:
            slot.start()
            # Written while the child already starts: the child's first
            # progress waits for it (see RunWrites.write), so the log keeps its order.
            self.run_writes.write(
                run,
                claimed,
                TaskStarted(task_id=t, node=self.node, attempt=entry.attempt, pid=slot.pid),
            )
            run.pending[0].add_done_callback(lambda _: crash_point("after_claim"))
            loop = asyncio.get_running_loop()
            soft = spec.soft_timeout or queue.soft_timeout
            hard = spec.hard_timeout or queue.hard_timeout
            if soft:
                timers.append(loop.call_later(soft, self.run_writes.soft_timeout, run, soft))
            if hard:
                timers.append(loop.call_later(hard, slot.kill))
            outcome = await slot.run(
                t,
                spec.kind,
                spec.params,
                entry.attempt,
                spec.model,
                lambda f, m: self.run_writes.progress(run, f, m),
            )
        except Exception as exc:
            logger.exception("running task %s failed in the worker", t)
            outcome = outcome_of_exception(exc)
        finally:
            for timer in timers:
                timer.cancel()
            self.pool.release(slot)
            self.slots.ended(run)
        if run.pending:
            await asyncio.wait(run.pending)  # each write logs its own failure
        if run.cancel_killed:
            outcome = Outcome(ending=Ending.CANCELLED)
        elif outcome.ending is Ending.DIED:
            # As if this worker had crashed: the entry stays pending, is
            # reclaimed after its lease, and counts one more delivery.
            logger.warning(
                "task %s: %s; left for reclaim", t, outcome.error and outcome.error.message
            )
            self._abandon(entry)
            return
        self._settle(entry, *run.unwritten, self._closing(outcome, entry, sub, queue))

    def _closing(
        self, outcome: Outcome, entry: WorkEntry, sub: TaskSubmitted, queue: QueueConfig
    ) -> Event:
        spec = sub.spec
        return closing_event(
            outcome,
            task_id=entry.task_id,
            node=self.node,
            attempt=entry.attempt,
            policy=spec.retry or queue.retry,
            hard_timeout=spec.hard_timeout or queue.hard_timeout,
            now=time.time(),
            rand=random.random(),
        )

    # -- settle --------------------------------------------------------------------

    def _settle(self, entry: WorkEntry, *events: Event) -> None:
        self.settles.put(entry, *events)

    def _abandon(self, entry: WorkEntry) -> None:
        """Give the slot back without settling: the entry stays pending and is
        reclaimed after its lease."""
        self.slots.release([entry])
