"""Real worker processes killed, frozen and crashed: every task still ends exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from eventcore.events import NodeStopped, TaskSpec
from eventcore.keys import Keys
from eventcore.log import EventLog
from projections.replay import replay
from tests.workerkit import LEASE_MS, event_types, spawn_worker, spec, wait_ended, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]


@pytest.fixture
def log(r, namespace) -> EventLog:
    return EventLog(r, Keys(namespace))


async def _wait_started(log: EventLog, task_id: str, timeout: float = 20) -> str:
    """The node that started the task."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for e in await log.history(task_id):
            if e.event.type_name() == "task.started":
                return e.event.node
        await asyncio.sleep(0.02)
    raise AssertionError("never started")


async def _wait_draining(log: EventLog, timeout: float = 10) -> None:
    """Until the worker wrote NodeDraining: it took the signal and claims no more."""

    async def draining() -> bool:
        nodes = await log.read(log.keys.nodes())
        return any(e.event.type_name() == "node.draining" for e in nodes)

    await wait_until(draining, timeout, what="no node.draining after the signal", interval=0.01)


def _stop(*procs) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(10)
        if p.stderr:
            p.stderr.close()


async def test_sigkilled_worker_task_completes_elsewhere_once(log, redis_url, namespace) -> None:
    """A SIGKILLed worker's task is reclaimed by another and ends there, once.

    The reclaim counts a delivery, but not necessarily the second: a live
    worker whose event loop stalls past its lease (starting its first child
    takes that long on a loaded machine, against the 600 ms lease here) takes
    its own entry back through its reclaim loop, which counts one too. So the
    counts are checked as the design promises them, growing with each claim,
    not as 1 then 2."""
    a = spawn_worker(redis_url, namespace, "a", ["--cpu"])
    try:
        res = await log.submit(spec("sleep", seconds=1.0))
        assert await _wait_started(log, res.task_id) == "a"
        os.kill(a.pid, signal.SIGKILL)
        b = spawn_worker(redis_url, namespace, "b", ["--cpu"])
        try:
            assert await wait_ended(log, res.task_id, timeout=30) == "task.succeeded"
        finally:
            _stop(b)
    finally:
        _stop(a)
    entries = await log.history(res.task_id)
    history = [e.event for e in entries]
    done = [e for e in history if e.type_name() == "task.succeeded"]
    assert len(done) == 1 and done[0].node == "b"
    claims = [(e.node, e.deliveries) for e in history if e.type_name() == "task.claimed"]
    assert [node for node, _ in claims] == ["a", "b"], claims
    assert claims[0][1] == 1 and claims[1][1] > claims[0][1], claims
    progress = {(e.node, e.delivery) for e in history if e.type_name() == "task.progress"}
    assert progress <= set(claims), f"progress not of a claim: {progress - set(claims)}"
    view = replay(entries).tasks[res.task_id]
    assert view.illegal == ()
    assert (view.status, view.node, view.deliveries) == ("succeeded", "b", claims[1][1])


async def test_crash_after_result_before_ack(log, redis_url, namespace) -> None:
    """The worker dies between knowing the outcome and writing it: another
    worker runs the task again and it ends once."""
    a = spawn_worker(
        redis_url, namespace, "a", ["--cpu"], env={"EVENTCORE_CRASH_AT": "after_result_before_ack"}
    )
    res = await log.submit(spec("sleep", seconds=0.2))
    assert a.wait(30) == 137
    b = spawn_worker(redis_url, namespace, "b", ["--cpu"])
    try:
        assert await wait_ended(log, res.task_id, timeout=30) == "task.succeeded"
    finally:
        _stop(a, b)
    assert (await event_types(log, res.task_id)).count("task.succeeded") == 1


async def test_poison_task_is_dead_lettered_at_max_deliveries(log, redis_url, namespace) -> None:
    w = spawn_worker(redis_url, namespace, "w", ["--cpu"])
    try:
        poison = await log.submit(spec("crash"))
        fine = await log.submit(spec("noop"))
        assert await wait_ended(log, fine.task_id, timeout=20) == "task.succeeded"
        assert await wait_ended(log, poison.task_id, timeout=40) == "task.dead_lettered"
    finally:
        _stop(w)
    history = [e.event for e in await log.history(poison.task_id)]
    starts = [e for e in history if e.type_name() == "task.started"]
    assert len(starts) == 3  # max_deliveries = 3 runs, the 4th delivery parks it
    dead = history[-1]
    assert dead.deliveries == 4 and "max_deliveries 3" in dead.reason
    assert len(await log.redis.xrange(log.keys.dead_letters(0))) == 1


async def test_zombie_worker_result_is_stale(log, redis_url, namespace) -> None:
    a = spawn_worker(redis_url, namespace, "a", ["--cpu"])
    b = None
    try:
        res = await log.submit(spec("sleep", seconds=1.5, steps=1))
        assert await _wait_started(log, res.task_id) == "a"
        os.kill(a.pid, signal.SIGSTOP)  # frozen past its lease: its child runs on
        b = spawn_worker(redis_url, namespace, "b", ["--cpu"])
        assert await wait_ended(log, res.task_id, timeout=30) == "task.succeeded"
        # Part of the scenario, not a wait: the zombie stays frozen a further
        # lease after the task ended elsewhere.
        await asyncio.sleep(LEASE_MS / 1000)
        os.kill(a.pid, signal.SIGCONT)
        deadline = time.monotonic() + 20
        while "task.result_stale" not in await event_types(log, res.task_id):
            assert time.monotonic() < deadline, "the zombie's result was never recorded"
            await asyncio.sleep(0.05)
    finally:
        _stop(a, *(x for x in [b] if x))
    history = [e.event for e in await log.history(res.task_id)]
    assert [e.node for e in history if e.type_name() == "task.succeeded"] == ["b"]
    stale = [e for e in history if e.type_name() == "task.result_stale"]
    assert stale[0].node == "a" and stale[0].outcome == "task.succeeded"
    assert await log.ended_as(res.task_id) == "task.succeeded"


async def test_sigterm_drains_running_tasks(log, redis_url, namespace) -> None:
    w = spawn_worker(redis_url, namespace, "w", ["--cpu"])
    try:
        res = await log.submit(spec("sleep", seconds=1.0))
        await _wait_started(log, res.task_id)
        w.send_signal(signal.SIGTERM)
        await _wait_draining(log)
        later = await log.submit(spec("noop"))
        assert w.wait(20) == 0
    finally:
        _stop(w)
    assert await log.ended_as(res.task_id) == "task.succeeded"
    assert await log.ended_as(later.task_id) is None  # no claiming while draining
    nodes = [e.event for e in await log.read(log.keys.nodes())]
    assert isinstance(nodes[-1], NodeStopped) and nodes[-1].reason == "drained"


async def test_second_sigint_stops_at_once_leaving_work_for_reclaim(
    log, redis_url, namespace
) -> None:
    w = spawn_worker(redis_url, namespace, "w", ["--cpu"])
    res = await log.submit(TaskSpec(kind="sleep", queue="q", params={"seconds": 30}))
    try:
        await _wait_started(log, res.task_id)
        w.send_signal(signal.SIGINT)
        await _wait_draining(log)  # the first SIGINT was handled: it drains
        w.send_signal(signal.SIGINT)
        assert w.wait(20) == 0
    finally:
        _stop(w)
    assert await log.ended_as(res.task_id) is None
    pending = await log.redis.xpending(log.keys.work(0, "q", "normal"), "workers")
    assert pending["pending"] == 1  # still there for another worker to reclaim


async def test_zombie_writes_no_progress_after_its_lease_is_taken(log, redis_url, namespace):
    """Regression (issue #10): a worker frozen past its lease, while its child
    kept reporting progress, wrote that progress when it woke, beside the new
    owner's and after the task had ended: the task view listed illegal events.
    Progress is now written only while its delivery holds the entry."""
    a = spawn_worker(redis_url, namespace, "a", ["--cpu"])
    b = None
    try:
        res = await log.submit(spec("sleep", seconds=2.0, steps=20))
        assert await _wait_started(log, res.task_id) == "a"
        os.kill(a.pid, signal.SIGSTOP)  # its child runs on and reports progress
        b = spawn_worker(redis_url, namespace, "b", ["--cpu"])
        assert await wait_ended(log, res.task_id, timeout=30) == "task.succeeded"
        os.kill(a.pid, signal.SIGCONT)  # its child's progress waits in the pipe
        deadline = time.monotonic() + 20
        while "task.result_stale" not in await event_types(log, res.task_id):
            assert time.monotonic() < deadline, "the zombie's result was never recorded"
            await asyncio.sleep(0.05)
    finally:
        _stop(a, *(x for x in [b] if x))
    entries = await log.history(res.task_id)
    view = replay(entries).tasks[res.task_id]
    assert view.illegal == ()
    events = [e.event for e in entries]
    taken = next(
        i for i, e in enumerate(events) if e.type_name() == "task.claimed" and e.node == "b"
    )
    progress = [e for e in events if e.type_name() == "task.progress"]
    claims = {(e.node, e.deliveries) for e in events if e.type_name() == "task.claimed"}
    assert {(p.node, p.delivery) for p in progress} <= claims  # each of its own delivery
    assert any(p.node == "b" for p in progress)
    late = [e for e in events[taken:] if e.type_name() == "task.progress" and e.node != "b"]
    assert late == [], f"progress from the old delivery after the reclaim: {late}"
