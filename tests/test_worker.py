"""A worker in the test's event loop against a real Redis: the claim/run/settle
cycle, retries, timeouts, cancel and the control channel."""

from __future__ import annotations

import asyncio
import time

import msgspec
import pytest

from eventcore.control import issue_and_wait
from eventcore.events import (
    Backoff,
    ControlKind,
    NodeHeartbeat,
    NodePaused,
    NodeResumed,
    NodeStarted,
    NodeStopped,
    RetryPolicy,
    TaskProgress,
    TaskRetryScheduled,
    TaskSpec,
)
from eventcore.keys import Keys
from eventcore.log import EventLog, Submission
from tests.workerkit import (
    event_types,
    fast_settings,
    make_worker,
    running,
    spec,
    wait_ended,
    wait_until,
)


@pytest.fixture
def settings(namespace: str):
    return fast_settings(namespace)


@pytest.fixture
def log(r, settings) -> EventLog:
    return EventLog(r, Keys(settings.namespace, settings.partitions))


async def test_noop_runs_inline_with_claimed_started_succeeded(log, settings) -> None:
    async with running(make_worker(log, settings, "w1")):
        res = await log.submit(spec("noop", x=1))
        assert await wait_ended(log, res.task_id) == "task.succeeded"
    history = await log.history(res.task_id)
    assert [e.event.type_name() for e in history] == [
        "task.submitted",
        "task.claimed",
        "task.started",
        "task.succeeded",
    ]
    assert history[-1].event.result == {"x": 1} and history[1].event.node == "w1"


async def test_many_tasks_over_partitions_each_end_once(r, namespace) -> None:
    settings = fast_settings(namespace, partitions=3)
    log = EventLog(r, Keys(namespace, 3))
    async with running(make_worker(log, settings, "w1", concurrency=50)):
        subs = await log.submit_many([Submission(spec=spec("noop", i=i)) for i in range(300)])
        for s in subs:
            assert await wait_ended(log, s.task_id) == "task.succeeded"
    for s in subs[:20]:
        assert (await event_types(log, s.task_id)).count("task.succeeded") == 1


async def test_child_process_task_reports_progress(log, settings) -> None:
    async with running(make_worker(log, settings, "w1")):
        res = await log.submit(spec("sleep", seconds=0.6, steps=3))
        assert await wait_ended(log, res.task_id) == "task.succeeded"
    events = [e.event for e in await log.history(res.task_id)]
    progress = [e.progress for e in events if isinstance(e, TaskProgress)]
    assert progress and progress[-1] == 1.0 and progress == sorted(progress)
    assert events[2].pid is not None  # started: in a child process


async def test_unknown_kind_fails_without_retry_and_worker_survives(log, settings) -> None:
    async with running(make_worker(log, settings, "w1")):
        bad = await log.submit(spec("no-such-kind"))
        assert await wait_ended(log, bad.task_id) == "task.failed"
        good = await log.submit(spec("noop"))
        assert await wait_ended(log, good.task_id) == "task.succeeded"
    failed = (await log.history(bad.task_id))[-1].event
    assert failed.error.type == "UnknownKind" and not failed.error.retryable


async def test_retries_follow_the_policy_then_fail(log, settings) -> None:
    policy = RetryPolicy(max_retries=2, backoff=Backoff.LINEAR, delay=0.2, jitter=0)
    async with running(make_worker(log, settings, "w1")):
        t0 = time.time()
        res = await log.submit(TaskSpec(kind="fail", queue="q", retry=policy))
        assert await wait_ended(log, res.task_id) == "task.failed"
    events = [e.event for e in await log.history(res.task_id)]
    retries = [e for e in events if isinstance(e, TaskRetryScheduled)]
    assert [(r.attempt, r.delay) for r in retries] == [(2, 0.2), (3, 0.4)]
    claims = [e for e in events if e.type_name() == "task.claimed"]
    assert [c.attempt for c in claims] == [1, 2, 3]
    # each retry ran no earlier than its delay after the failure before it
    assert claims[1].at >= retries[0].at + 0.2 - 0.01 and claims[2].at >= retries[1].at + 0.4 - 0.01
    assert time.time() - t0 >= 0.6


async def test_non_retryable_error_fails_at_once(log, settings) -> None:
    policy = RetryPolicy(max_retries=5, delay=0.05)
    async with running(make_worker(log, settings, "w1")):
        res = await log.submit(
            TaskSpec(kind="fail", queue="q", retry=policy, params={"retryable": False})
        )
        assert await wait_ended(log, res.task_id) == "task.failed"
    assert "task.retry_scheduled" not in await event_types(log, res.task_id)


async def test_soft_timeout_warns_and_hard_timeout_kills(log, settings) -> None:
    async with running(make_worker(log, settings, "w1")) as worker:
        soft = await log.submit(
            TaskSpec(kind="sleep", queue="q", params={"seconds": 0.8}, soft_timeout=0.3)
        )
        hard = await log.submit(
            TaskSpec(kind="sleep", queue="q", params={"seconds": 30}, hard_timeout=0.5)
        )
        assert await wait_ended(log, soft.task_id) == "task.succeeded"
        assert await wait_ended(log, hard.task_id) == "task.timed_out"
        ok = await log.submit(spec("sleep", seconds=0.1))  # the slot works again
        assert await wait_ended(log, ok.task_id) == "task.succeeded"
        assert worker.slots.running == {}
    warnings = [
        e.event.warning
        for e in await log.history(soft.task_id)
        if isinstance(e.event, TaskProgress) and e.event.warning
    ]
    assert warnings == ["soft timeout of 0.3s passed"]
    timed_out = (await log.history(hard.task_id))[-1].event
    assert timed_out.timeout == 0.5


async def test_hard_timeout_retries_when_the_policy_allows(log, settings) -> None:
    policy = RetryPolicy(max_retries=1, delay=0.05, jitter=0)
    async with running(make_worker(log, settings, "w1")):
        res = await log.submit(
            TaskSpec(
                kind="sleep", queue="q", params={"seconds": 30}, hard_timeout=0.3, retry=policy
            )
        )
        assert await wait_ended(log, res.task_id) == "task.timed_out"
    types = await event_types(log, res.task_id)
    assert types.count("task.retry_scheduled") == 1 and types.count("task.claimed") == 2


async def test_cancel_queued_task_never_runs(log, settings) -> None:
    res = await log.submit(spec("sleep", seconds=5))
    await log.request_cancel(res.task_id, reason="user")
    async with running(make_worker(log, settings, "w1")):
        assert await wait_ended(log, res.task_id) == "task.cancelled"
    assert "task.started" not in await event_types(log, res.task_id)


async def test_cancel_running_task_cooperatively(log, settings) -> None:
    async with running(make_worker(log, settings, "w1")):
        res = await log.submit(spec("sleep", seconds=10, steps=100))
        await _wait_for_event(log, res.task_id, "task.started")
        t0 = time.monotonic()
        await log.request_cancel(res.task_id)
        assert await wait_ended(log, res.task_id) == "task.cancelled"
        assert time.monotonic() - t0 < 2


async def test_cancel_of_a_finished_task_says_so(log, settings) -> None:
    async with running(make_worker(log, settings, "w1")):
        res = await log.submit(spec("noop"))
        await wait_ended(log, res.task_id)
    out = await log.request_cancel(res.task_id)
    assert out.outcome.value == "done" and out.ended_as == "task.succeeded"


async def test_every_control_command_is_acked(log, settings) -> None:
    async with running(make_worker(log, settings, "w1")) as worker:
        await _wait_for_node_event(log, NodeStarted)

        async def ask(kind, **args):
            acks = await issue_and_wait(log, "w1", kind, args, timeout=5)
            assert len(acks) == 1 and acks[0].node == "w1"
            return acks[0]

        assert (await ask(ControlKind.PING)).ok
        assert (await ask(ControlKind.PAUSE)).ok and worker.slots.paused
        paused = await log.submit(spec("noop"))
        # Not a wait for something to happen: the absence of a claim is what
        # is tested, and this is the window in which one would show.
        await asyncio.sleep(0.4)
        assert await log.ended_as(paused.task_id) is None  # not claimed while paused
        assert (await ask(ControlKind.RESUME)).ok
        assert await wait_ended(log, paused.task_id) == "task.succeeded"
        assert (await ask(ControlKind.SET_CONCURRENCY, concurrency=7)).ok
        assert worker.slots.size == 7 and worker.pool.size == 7
        bad = await ask(ControlKind.SET_CONCURRENCY, concurrency=0)
        assert not bad.ok and "concurrency" in bad.detail
        assert (await ask(ControlKind.UPDATE_CONFIG, heartbeat_interval=0.3)).ok
        assert worker.settings.worker.heartbeat_interval == 0.3
        refused = await ask(ControlKind.UPDATE_CONFIG, partitions=4)
        assert not refused.ok and "partitions" in refused.detail
        assert "noop" in (await ask(ControlKind.RELOAD_HANDLERS)).detail
        missing = await ask(ControlKind.CANCEL_TASK, task_id="nope")
        assert not missing.ok and "not running" in missing.detail
        running_task = await log.submit(spec("sleep", seconds=10, steps=100))
        await _wait_for_event(log, running_task.task_id, "task.started")
        assert (await ask(ControlKind.CANCEL_TASK, task_id=running_task.task_id)).ok
        assert await wait_ended(log, running_task.task_id) == "task.cancelled"
        broadcast = await issue_and_wait(log, "*", ControlKind.PING, timeout=5)
        assert [a.node for a in broadcast] == ["w1"]
        assert (await ask(ControlKind.DRAIN)).ok
        assert worker.draining
    types = [type(e.event) for e in await log.read(log.keys.nodes())]
    assert NodePaused in types and NodeResumed in types and types[-1] is NodeStopped


async def test_heartbeats_and_lost_nodes(log, settings) -> None:
    from eventcore.nodes import append_node_event

    async def node_events() -> list:
        return [e.event for e in await log.read(log.keys.nodes())]

    async def two_beats_and_a_lost_node() -> bool:
        events = await node_events()
        beats = [e for e in events if isinstance(e, NodeHeartbeat) and e.node == "w1"]
        return len(beats) >= 2 and any(e.type_name() == "node.lost" for e in events)

    await append_node_event(log, NodeHeartbeat(node="ghost"), now=time.time() - 5)
    async with running(make_worker(log, settings, "w1")):
        await wait_until(two_beats_and_a_lost_node, what="two heartbeats and node.lost of ghost")
    events = await node_events()
    beats = [e for e in events if isinstance(e, NodeHeartbeat) and e.node == "w1"]
    lost = [e for e in events if e.type_name() == "node.lost"]
    assert len(beats) >= 2 and beats[0].free_slots == 4
    assert [(x.node, x.noticed_by) for x in lost] == [("ghost", "w1")]


async def test_lease_renewal_keeps_a_long_task_from_being_stolen(log, settings) -> None:
    """A task running 3x the lease on one worker while another worker reclaims:
    it is never taken over, and ends once."""
    a = make_worker(log, settings, "a")
    b = make_worker(log, settings, "b")
    async with running(a), running(b):
        res = await log.submit(spec("sleep", seconds=3 * settings.queues[0].lease_ms / 1000))
        assert await wait_ended(log, res.task_id, timeout=15) == "task.succeeded"
    types = await event_types(log, res.task_id)
    assert types.count("task.claimed") == 1 and "task.result_stale" not in types


async def _wait_for_event(log, task_id: str, type_name: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if type_name in await event_types(log, task_id):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{type_name} never came for {task_id}")


async def _wait_for_node_event(log, cls, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(isinstance(e.event, cls) for e in await log.read(log.keys.nodes())):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"no {cls.__name__}")


def test_settings_helper_is_valid(namespace) -> None:
    s = fast_settings(namespace)
    assert msgspec.convert(msgspec.to_builtins(s), type(s)) == s


async def test_prefetched_entries_keep_their_lease(log, settings) -> None:
    """concurrency 1 + prefetch 1: the second task waits for the child while
    another worker reclaims idle entries; it is never taken from its worker."""
    lease = settings.queues[0].lease_ms / 1000
    a = make_worker(log, settings, "a", concurrency=1)
    async with running(a):
        first = await log.submit(spec("sleep", seconds=2 * lease, steps=2))
        # Started before the second is submitted: with several partitions the
        # worker takes them in partition order, not in the order submitted.
        await _wait_for_event(log, first.task_id, "task.started")
        second = await log.submit(spec("sleep", seconds=0.1))
        await wait_until(  # held, not yet running
            lambda: list(a.slots.waiting) == [second.task_id],
            what="the second task waiting for the child",
        )
        async with running(make_worker(log, settings, "b", concurrency=2)):
            assert await wait_ended(log, second.task_id, timeout=15) == "task.succeeded"
    for res in (first, second):
        claims = [
            e.event.node
            for e in await log.history(res.task_id)
            if e.event.type_name() == "task.claimed"
        ]
        assert claims == ["a"]
