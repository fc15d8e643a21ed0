"""Moving stranded tasks (workers/reroute.py): the pure plan, the move script,
and workers doing it against a real Redis."""

from __future__ import annotations

import asyncio
import time

import msgspec
import pytest

from eventcore.codec import encode
from eventcore.config import QueueConfig, Settings
from eventcore.events import Priority, TaskRerouted, TaskSpec, TaskSubmitted
from eventcore.ids import task_id_in_partition
from eventcore.keys import Keys
from eventcore.log import EventLog, Reroute, groups
from projections.replay import replay
from projections.runner import Projector
from tests.workerkit import event_types, fast_settings, make_worker, running, wait_ended
from workers.reroute import Waiting, plan, reroute_once, waiting_entries

GPU = QueueConfig(name="gpu", gpu=True, lease_ms=600, kinds=("noop", "inpaint"))
CPU = QueueConfig(name="cpu", lease_ms=600)
QUEUES = (GPU, CPU)


def two_queues(namespace: str) -> Settings:
    return msgspec.structs.replace(fast_settings(namespace), queues=QUEUES)


def cpu_worker(log: EventLog, settings: Settings, node: str = "cpu-1"):
    return make_worker(log, settings, node, queues=(CPU,))  # no GPU: it reads only cpu


def waiting(queue: str, *, routed: bool, kind: str = "noop", task: str = "t") -> Waiting:
    sub = TaskSubmitted(task_id=task, spec=TaskSpec(kind=kind, queue=queue), routed=routed)
    return Waiting("s", "1-0", queue, Priority.NORMAL, sub)


# -- the plan (pure) -------------------------------------------------------------------


def test_plan_moves_a_routed_task_off_a_queue_nobody_reads() -> None:
    [move] = plan([waiting("gpu", routed=True)], QUEUES, {"cpu"}, {})
    assert move.to_queue == "cpu" and "no live node reads gpu" in move.reason


def test_plan_never_moves_a_pinned_task() -> None:
    """Pinned, or submitted before `routed` existed (it decodes as False)."""
    assert plan([waiting("gpu", routed=False)], QUEUES, {"cpu"}, {}) == []


def test_plan_leaves_tasks_alone_when_their_queue_is_read_or_nothing_is() -> None:
    assert plan([waiting("gpu", routed=True)], QUEUES, {"gpu", "cpu"}, {}) == []
    assert plan([waiting("gpu", routed=True)], QUEUES, set(), {}) == []


def test_plan_moves_only_to_a_served_queue_that_takes_the_kind() -> None:
    only_inpaint = QueueConfig(name="img", kinds=("inpaint",))
    queues = (GPU, only_inpaint)
    assert plan([waiting("gpu", routed=True, kind="noop")], queues, {"img"}, {}) == []
    [move] = plan([waiting("gpu", routed=True, kind="inpaint")], queues, {"img"}, {})
    assert move.to_queue == "img"


def test_plan_spreads_a_batch_over_equally_loaded_queues() -> None:
    a, b = QueueConfig(name="a"), QueueConfig(name="b")
    stranded = [waiting("gpu", routed=True, task=f"t{i}") for i in range(4)]
    moves = plan(stranded, (GPU, a, b), {"a", "b"}, {"a": 0, "b": 0})
    assert sorted(m.to_queue for m in moves) == ["a", "a", "b", "b"]


# -- the move script -----------------------------------------------------------------------


async def _stranded(log: EventLog, *, routed: bool = True) -> str:
    # In partition 0 whatever the partition count, so the tests can count pages of one stream.
    task_id = task_id_in_partition(0, log.keys.partitions)
    res = await log.submit(TaskSpec(kind="noop", queue="gpu"), routed=routed, task_id=task_id)
    return res.task_id


def _move(log: EventLog, task_id: str, entry_id: str, sub: TaskSubmitted) -> Reroute:
    p = log.keys.partition(task_id)
    spec = msgspec.structs.replace(sub.spec, queue="cpu")
    return Reroute(
        stream=log.keys.work(p, "gpu", "normal"),
        entry_id=entry_id,
        to_stream=log.keys.work(p, "cpu", "normal"),
        event=TaskRerouted(task_id=task_id, from_queue="gpu", to_queue="cpu"),
        spec=encode(msgspec.structs.replace(sub, spec=spec)),
    )


async def test_an_entry_moves_once_however_many_ask(log: EventLog) -> None:
    task = await _stranded(log)
    [w] = await waiting_entries(log, ["gpu"])
    first, second = await asyncio.gather(
        log.reroute([_move(log, task, w.entry_id, w.submitted)]),
        log.reroute([_move(log, task, w.entry_id, w.submitted)]),
    )
    assert sorted(r.ok for r in first + second) == [False, True]
    assert (await event_types(log, task)).count("task.rerouted") == 1
    p = log.keys.partition(task)
    assert await log.redis.xlen(log.keys.work(p, "gpu", "normal")) == 0
    [(_, fields)] = await log.redis.xrange(log.keys.work(p, "cpu", "normal"))
    assert fields[b"task"] == task.encode() and fields[b"attempt"] == b"1"
    moved = groups.WorkEntry.from_reply("s", "1-0", fields).submitted
    assert moved.spec.queue == "cpu" and moved.routed


async def test_a_claimed_entry_is_never_moved(log: EventLog) -> None:
    task = await _stranded(log)
    [w] = await waiting_entries(log, ["gpu"])
    stream = log.keys.work(log.keys.partition(task), "gpu", "normal")
    await groups.ensure_group(log.redis, stream, log.group)
    await groups.read_group(log.redis, log.group, "gpu-1", [stream], count=1)
    assert await waiting_entries(log, ["gpu"]) == []
    [res] = await log.reroute([_move(log, task, w.entry_id, w.submitted)])
    assert not res.ok and "delivered" in res.why
    assert await log.redis.xlen(stream) == 1
    assert "task.rerouted" not in await event_types(log, task)


# -- workers doing it --------------------------------------------------------------------


async def test_a_stranded_task_moves_when_a_node_for_another_queue_appears_and_runs(
    r, namespace
) -> None:
    settings = two_queues(namespace)
    log = EventLog(r, Keys(namespace))
    stranded = await _stranded(log)
    pinned = await _stranded(log, routed=False)
    async with running(cpu_worker(log, settings)):
        assert await wait_ended(log, stranded) == "task.succeeded"
        # The pass that moved the routed task saw the pinned one too.
        assert (await waiting_entries(log, ["gpu"]))[0].submitted.task_id == pinned
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:  # several more passes (0.2 s apart)
            assert "task.rerouted" not in await event_types(log, pinned)
            await asyncio.sleep(0.1)
    history = await event_types(log, stranded)
    assert history[:2] == ["task.submitted", "task.rerouted"]
    assert history.count("task.rerouted") == 1 and history[-1] == "task.succeeded"
    [moved] = [e.event for e in await log.history(stranded) if isinstance(e.event, TaskRerouted)]
    assert (moved.from_queue, moved.to_queue, moved.by) == ("gpu", "cpu", "cpu-1")
    # The projector's views after the move equal a replay of the log.
    projector = Projector(log)
    while await projector.step(block_ms=None):
        pass
    entries = []
    for stream in [log.keys.events(0), log.keys.nodes()]:
        entries += await log.read(stream)
    expected = replay(entries)
    stored = await projector.store.load(expected.tasks)
    assert stored.tasks == expected.tasks and stored.queues == expected.queues
    assert stored.stats_by == expected.stats_by
    gpu, cpu = stored.queues["gpu"], stored.queues["cpu"]
    assert (gpu.waiting, gpu.moved_out, cpu.moved_in, cpu.succeeded) == (1, 1, 1, 1)
    assert stored.tasks[stranded].queue == "cpu" and stored.tasks[pinned].queue == "gpu"


async def test_nothing_moves_without_a_live_node(r, namespace) -> None:
    settings = two_queues(namespace)
    log = EventLog(r, Keys(namespace))
    await _stranded(log)
    assert await reroute_once(log, settings.queues, silent_for=1.0, by="x") == []
    assert len(await waiting_entries(log, ["gpu"])) == 1


async def test_reroute_refuses_bad_arguments_and_writes_nothing(log: EventLog) -> None:
    from eventcore.errors import ScriptArgumentError

    k = log.keys
    keys = [k.events(0), k.done(0), k.work(0, "gpu", "normal"), k.work(0, "cpu", "normal")]
    good = ["workers", "1-0", "t", b"event", b"spec"]
    bad = [
        (keys, ["", *good[1:]]),
        (keys, [good[0], "not-an-id", *good[2:]]),
        (keys, [*good[:2], "", *good[3:]]),
        (keys, [*good[:3], "", good[4]]),
        (keys, [*good[:4], ""]),
        ([*keys[:3], keys[2]], good),
    ]
    for keys_, args in bad:
        with pytest.raises(ScriptArgumentError):
            await log.scripts.raw("reroute", keys_, args)
    assert await log.redis.keys(k.all_keys_pattern()) == []


async def test_a_task_that_ended_is_not_moved(log: EventLog) -> None:
    task = await _stranded(log)
    [w] = await waiting_entries(log, ["gpu"])
    await log.redis.hset(log.keys.done(log.keys.partition(task)), task, "task.cancelled")
    [res] = await log.reroute([_move(log, task, w.entry_id, w.submitted)])
    assert not res.ok and "ended" in res.why


async def test_routed_tasks_behind_a_long_pinned_backlog_are_reached(log: EventLog) -> None:
    """Each pass reads a page per stream and the next one goes on from there,
    so pinned tasks at the head of a queue cannot hide routed ones for ever."""
    from eventcore.events import Capabilities, NodeStarted
    from eventcore.nodes import append_node_event

    caps = Capabilities(cpu_cores=2, memory_mb=1024)
    await append_node_event(
        log, NodeStarted(node="cpu-1", capabilities=caps, queues=("cpu",), concurrency=1)
    )
    for _ in range(5):
        await _stranded(log, routed=False)
    routed = await _stranded(log)
    cursors: dict[str, str] = {}
    passes = 0
    while "task.rerouted" not in await event_types(log, routed):
        passes += 1
        assert passes <= 3, "the routed task was never reached"
        await reroute_once(log, QUEUES, silent_for=5.0, by="t", cursors=cursors, limit=2)
    assert passes == 3  # pages of 2: pinned, pinned; pinned, pinned; pinned, routed
    assert len(await waiting_entries(log, ["gpu"])) == 5
