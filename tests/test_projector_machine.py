"""The projector against a real Redis under a hypothesis state machine: tasks
are submitted and moved through their lifecycles, nodes come and go, and the
projector steps in small batches, dies before writing a batch or between
writing and acking it, restarts under the same or a new consumer name, and a
rebuild switches the views under it (RELIABILITY.md invariant 4: the folded
log equals the incrementally built views under any crash interleaving).

After every rule the stored views equal a replay of the log up to their
watermark; after catching up, a replay of the whole log.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from eventcore.connection import ClientOptions, connect
from eventcore.events import (
    Capabilities,
    ErrorInfo,
    Event,
    NodeDraining,
    NodeHeartbeat,
    NodeLost,
    NodePaused,
    NodeResumed,
    NodeStarted,
    NodeStopped,
    Priority,
    TaskCancelled,
    TaskCancelRequested,
    TaskClaimed,
    TaskDeadLettered,
    TaskFailed,
    TaskProgress,
    TaskRerouted,
    TaskResultStale,
    TaskRetryScheduled,
    TaskScheduled,
    TaskSpec,
    TaskStarted,
    TaskSucceeded,
    TaskTimedOut,
)
from eventcore.ids import task_id_in_partition
from eventcore.keys import Keys
from eventcore.log import EventLog, Submission
from eventcore.transitions import HELD, TRANSITIONS, TaskStatus
from projections.replay import Views, replay
from projections.runner import Projector
from projections.store import ViewStore, current_views
from projections.tools import diff_views, rebuild, whole_log
from tests.viewkit import canonical, log_up_to, stored_views

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

# Sized to end well inside the timeout on a loaded 2-core machine. A step
# costs a dozen round trips (the rule, then the views read back and checked
# against a replay of the log), and on a busy machine each waits for a time
# slice: at 120 examples of 40 steps the test took 45-60 s with the machine
# fairly quiet and over 120 s under load, when the timeout fired inside an
# example; pytest-timeout raises its failure there, so Hypothesis took it for
# the test failing, found the example passing on replay and reported a
# FlakyFailure. 30 examples of 25 steps take 12-25 s, and about 35 s with two
# more busy processes than cores. No per-example deadline, for the same
# reason: a slow example on a busy machine is not a failure.
MAX_EXAMPLES = 30
STEPS = 25

PARTITIONS = 2
NODES = ("n1", "n2", "n3")
# Event times are mostly now; some lie far enough back to fall out of the
# stats' 24 h per-minute window, or a little ahead, as skewed clocks write.
SKEWS = (0.0, 0.0, 0.0, -90.0, 30.0, -2 * 86400.0)


class Crash(Exception):
    """The projector process dying at a chosen point."""


class MortalProjector(Projector):
    """A projector that dies before writing a batch, or after writing it and
    before acking it, when ``crash_at`` says so."""

    crash_at: str | None = None

    async def _write(self, entries: Any, marks: dict[str, str]) -> None:
        if self.crash_at == "before_write":
            raise Crash("killed before writing")
        await super()._write(entries, marks)

    async def _ack(self, acks: dict[str, list[str]]) -> None:
        if self.crash_at == "before_ack":
            raise Crash("killed after writing, before acking")
        await super()._ack(acks)


@dataclass
class TaskModel:
    """What the test knows of a task, to write the next legal event."""

    status: TaskStatus
    attempt: int = 1
    deliveries: int = 0
    node: str | None = None
    progress: float = 0.0


def _event_for(task_id: str, m: TaskModel, kind: type[Event], d: st.DataObject, at: float) -> Any:
    """An event of type ``kind`` for the task, with fields that fit its state."""
    node = m.node or d.draw(st.sampled_from(NODES))
    error = ErrorInfo(type="ValueError", message="bad input", retryable=False)
    if kind is TaskScheduled:
        return TaskScheduled(task_id=task_id, run_at=at + 60, at=at)
    if kind is TaskClaimed:
        return TaskClaimed(
            task_id=task_id,
            node=d.draw(st.sampled_from(NODES)),
            attempt=m.attempt,
            deliveries=m.deliveries + 1,
            entry_id=f"{m.deliveries + 1}-0",
            at=at,
        )
    if kind is TaskStarted:
        return TaskStarted(task_id=task_id, node=node, attempt=m.attempt, pid=4242, at=at)
    if kind is TaskProgress:
        step = d.draw(st.sampled_from([0.0, 0.25, 0.5]))
        return TaskProgress(
            task_id=task_id,
            attempt=m.attempt,
            progress=min(1.0, m.progress + step),
            message="working",
            warning=d.draw(st.sampled_from([None, "soft timeout"])),
            at=at,
        )
    if kind is TaskSucceeded:
        return TaskSucceeded(task_id=task_id, node=node, attempt=m.attempt, result={"n": 1}, at=at)
    if kind is TaskFailed:
        return TaskFailed(task_id=task_id, node=node, attempt=m.attempt, error=error, at=at)
    if kind is TaskTimedOut:
        return TaskTimedOut(task_id=task_id, node=node, attempt=m.attempt, timeout=1.0, at=at)
    if kind is TaskRetryScheduled:
        return TaskRetryScheduled(
            task_id=task_id, attempt=m.attempt + 1, run_at=at + 1, delay=1.0, at=at
        )
    if kind is TaskCancelled:
        return TaskCancelled(
            task_id=task_id, node=m.node if m.status in HELD else None, reason="user", at=at
        )
    if kind is TaskDeadLettered:
        return TaskDeadLettered(
            task_id=task_id, deliveries=m.deliveries, reason="max_deliveries", node=m.node, at=at
        )
    if kind is TaskCancelRequested:
        return TaskCancelRequested(task_id=task_id, reason="user", by="tester", at=at)
    if kind is TaskRerouted:
        # The test does not track the queue: a move to the same queue, or to
        # the other one, are both events a log may hold.
        to = d.draw(st.sampled_from(["q", "r"]))
        return TaskRerouted(task_id=task_id, from_queue="q", to_queue=to, reason="test", at=at)
    if kind is TaskResultStale:
        return TaskResultStale(
            task_id=task_id,
            node=d.draw(st.sampled_from(NODES)),
            attempt=m.attempt,
            outcome="task.succeeded",
            reason="lease lost",
            at=at,
        )
    raise AssertionError(f"no event built for {kind}")


def _apply(m: TaskModel, event: Any) -> None:
    """Move the model along as the folds will (the status by the table)."""
    m.status = TRANSITIONS[m.status][type(event)]
    match event:
        case TaskClaimed(node=node, deliveries=deliveries):
            m.node, m.deliveries, m.progress = node, deliveries, 0.0
        case TaskProgress(progress=progress):
            m.progress = progress
        case TaskRetryScheduled(attempt=attempt):
            m.attempt, m.node, m.progress = attempt, None, 0.0


class ProjectorMachine(RuleBasedStateMachine):
    redis_url: ClassVar[str] = ""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.Runner()
        self.namespace = "m" + uuid.uuid4().hex[:12]
        self.log = self.run(self._connect())
        self.tasks: dict[str, TaskModel] = {}
        self.names = 0
        self.projector = self._new_projector(rename=True)

    async def _connect(self) -> EventLog:
        redis = await connect(self.redis_url, ClientOptions(retry_attempts=2))
        return EventLog(redis, Keys(self.namespace, partitions=PARTITIONS))

    def _new_id(self, data: st.DataObject) -> str:
        """A new task id in a drawn partition: which batch a task's events land
        in must not depend on the random bits of its id."""
        return task_id_in_partition(data.draw(st.integers(0, PARTITIONS - 1)), PARTITIONS)

    def run(self, coro: Any) -> Any:
        return self.loop.run(coro)

    def _new_projector(self, *, rename: bool, batch: int = 3) -> MortalProjector:
        if rename:
            self.names += 1
        return MortalProjector(
            self.log, batch=batch, consumer=f"host-{self.names}", follow_pointer=True
        )

    def teardown(self) -> None:
        async def clean() -> None:
            keys = [k async for k in self.log.redis.scan_iter(match=f"{self.namespace}:*")]
            if keys:
                await self.log.redis.unlink(*keys)
            await self.log.redis.aclose()

        try:
            self.run(clean())
        finally:
            self.loop.close()

    # -- the log -------------------------------------------------------------------

    @rule(data=st.data(), n=st.integers(1, 3))
    def submit(self, data: st.DataObject, n: int) -> None:
        subs = [
            Submission(
                spec=TaskSpec(
                    kind=data.draw(st.sampled_from(["resize", "noop"])),
                    queue=data.draw(st.sampled_from(["q", "r"])),
                    priority=data.draw(st.sampled_from(list(Priority))),
                    tenant=data.draw(st.sampled_from(["", "acme"])),
                    params={"i": len(self.tasks) + i},
                ),
                run_at=data.draw(st.sampled_from([None, None, time.time() + 3600])),
                task_id=self._new_id(data),
            )
            for i in range(n)
        ]
        results = self.run(self.log.submit_many(subs))
        for sub, res in zip(subs, results):
            status = TaskStatus.SCHEDULED if sub.run_at else TaskStatus.QUEUED
            self.tasks[res.task_id] = TaskModel(status)

    @precondition(lambda self: self.tasks)
    @rule(data=st.data())
    def advance(self, data: st.DataObject) -> None:
        """One to three tasks take one to three legal steps each, appended in one call."""
        ids = data.draw(
            st.lists(st.sampled_from(sorted(self.tasks)), min_size=1, max_size=3, unique=True)
        )
        events = []
        for task_id in ids:
            m = self.tasks[task_id]
            for _ in range(data.draw(st.integers(1, 3))):
                legal = sorted(TRANSITIONS[m.status], key=lambda k: k.type_name())
                kind = data.draw(st.sampled_from(legal))
                at = time.time() + data.draw(st.sampled_from(SKEWS))
                event = _event_for(task_id, m, kind, data, at)
                _apply(m, event)
                events.append(event)
        self.run(self.log.append_many(events))

    @rule(data=st.data())
    def illegal(self, data: st.DataObject) -> None:
        """An event the table refuses, for a known task or one never submitted:
        the folds flag it, and the projector must flag it the same way."""
        task_id = data.draw(st.sampled_from([self._new_id(data), *sorted(self.tasks)]))
        m = self.tasks.get(task_id, TaskModel(TaskStatus.QUEUED))
        refused = [
            k
            for k in (TaskStarted, TaskProgress, TaskSucceeded, TaskClaimed)
            if task_id not in self.tasks or k not in TRANSITIONS[m.status]
        ]
        if refused:
            kind = data.draw(st.sampled_from(refused))
            self.run(self.log.append(_event_for(task_id, m, kind, data, time.time())))

    @rule(data=st.data())
    def node_event(self, data: st.DataObject) -> None:
        node = data.draw(st.sampled_from(NODES))
        event = data.draw(
            st.sampled_from(
                [
                    NodeStarted(
                        node=node,
                        capabilities=Capabilities(cpu_cores=2, memory_mb=1024),
                        queues=("q", "r"),
                        concurrency=2,
                        pid=99,
                    ),
                    NodeHeartbeat(node=node, running=(), free_slots=2, load=0.5),
                    NodePaused(node=node, by="ops"),
                    NodeResumed(node=node, by="ops"),
                    NodeDraining(node=node, reason="sigterm"),
                    NodeStopped(node=node, reason="drained"),
                    NodeLost(node=node, last_seen=time.time() - 30, noticed_by="n1"),
                ]
            )
        )
        self.run(self.log.append(event))

    # -- the projector -------------------------------------------------------------

    @rule(batch=st.integers(1, 8))
    def step(self, batch: int) -> None:
        self.projector.batch = batch
        self.run(self.projector.step(block_ms=None))

    @rule(
        point=st.sampled_from(["before_write", "before_ack"]),
        batch=st.integers(1, 8),
        rename=st.booleans(),
        next_batch=st.integers(1, 8),
    )
    def crash(self, point: str, batch: int, rename: bool, next_batch: int) -> None:
        """The projector dies mid-batch; a new one starts under the same
        consumer name (a supervisor restarting it) or a new one (a new pid),
        maybe with another batch size, so a redelivered batch comes back in
        other pieces."""
        self.projector.batch = batch
        self.projector.crash_at = point
        try:
            self.run(self.projector.step(block_ms=None))
        except Crash:
            pass
        self.projector = self._new_projector(rename=rename, batch=next_batch)

    @rule(rename=st.booleans(), batch=st.integers(1, 8))
    def restart(self, rename: bool, batch: int) -> None:
        self.projector = self._new_projector(rename=rename, batch=batch)

    @rule(batch=st.integers(1, 50))
    def rebuild_views(self, batch: int) -> None:
        """A rebuild folds the log into fresh views and switches the projector to them."""
        self.run(rebuild(self.log, batch=batch))

    @rule()
    def catch_up(self) -> None:
        async def check() -> None:
            while await self.projector.step(block_ms=None):
                pass
            store = ViewStore(self.log, await current_views(self.log))
            _assert_same(await stored_views(store), replay(await whole_log(self.log)))

        self.run(check())

    @invariant()
    def views_are_the_log_up_to_their_watermark(self) -> None:
        async def check() -> None:
            store = ViewStore(self.log, await current_views(self.log))
            expected = replay(await log_up_to(self.log, await store.watermark()))
            _assert_same(await stored_views(store), expected)

        self.run(check())


def _assert_same(stored: Views, expected: Views) -> None:
    assert canonical(stored) == canonical(expected), diff_views(stored, expected)


def test_projector_views_equal_replay_under_crashes(redis_url: str) -> None:
    ProjectorMachine.redis_url = redis_url
    run_state_machine_as_test(
        ProjectorMachine,
        settings=settings(
            max_examples=MAX_EXAMPLES,
            stateful_step_count=STEPS,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
