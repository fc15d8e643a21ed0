"""The read API: filtered lists with cursors, read-your-writes."""

from __future__ import annotations

import time

import pytest

from eventcore.events import TaskSpec
from eventcore.keys import Keys
from eventcore.log import EventLog, Submission
from projections.read import TaskFilter, list_tasks, wait_for
from projections.runner import Projector
from tests.workerkit import fast_settings, make_worker, running, spec, wait_ended


@pytest.fixture
async def world(r, namespace):
    settings = fast_settings(namespace, partitions=2)
    log = EventLog(r, Keys(namespace, 2))
    async with running(make_worker(log, settings, "w1", concurrency=8)):
        ok = await log.submit_many([Submission(spec=spec("noop", i=i)) for i in range(30)])
        bad = await log.submit_many([Submission(spec=spec("fail", retryable=False))] * 7)
        for s in ok + bad:
            await wait_ended(log, s.task_id)
    other = await log.submit(TaskSpec(kind="noop", queue="elsewhere", tenant="acme"))
    projector = Projector(log)
    while await projector.step():
        pass
    return log, projector.store, ok, bad, other


async def test_lists_by_status_queue_kind_node_tenant(world) -> None:
    _elog, store, _ok, bad, other = world
    page = await list_tasks(store, TaskFilter(status="failed"), limit=50)
    assert {v.task_id for v in page.tasks} == {b.task_id for b in bad} and page.next_cursor is None
    assert len((await list_tasks(store, TaskFilter(queue="q"), limit=100)).tasks) == 37
    assert len((await list_tasks(store, TaskFilter(kind="noop", node="w1"), limit=100)).tasks) == 30
    page = await list_tasks(store, TaskFilter(tenant="acme"))
    assert [v.task_id for v in page.tasks] == [other.task_id]
    assert (await list_tasks(store, TaskFilter(status="queued"))).tasks[0].queue == "elsewhere"
    assert (await list_tasks(store, TaskFilter(status="failed", kind="noop"))).tasks == []


async def test_cursor_pages_cover_everything_once_newest_first(world) -> None:
    _, store, _ok, _bad, _other = world
    seen, cursor = [], None
    while True:
        page = await list_tasks(store, TaskFilter(), limit=7, cursor=cursor)
        seen += page.tasks
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert len(seen) == len({v.task_id for v in seen}) == 38
    # newest first, to the millisecond (the index score)
    times = [int(v.submitted_at * 1000) for v in seen]
    assert times == sorted(times, reverse=True)


async def test_time_range_and_bad_cursor(world) -> None:
    _, store, _ok, _bad, other = world
    since = other.task_id and (await store.task(other.task_id)).submitted_at
    page = await list_tasks(store, TaskFilter(since=since))
    assert [v.task_id for v in page.tasks] == [other.task_id]
    assert other.task_id not in {
        v.task_id for v in (await list_tasks(store, TaskFilter(until=since), limit=100)).tasks
    }
    with pytest.raises(ValueError, match="cursor"):
        await list_tasks(store, TaskFilter(), cursor="garbage")


async def test_wait_for_read_your_writes(r, namespace) -> None:
    log = EventLog(r, Keys(namespace))
    projector = Projector(log)
    res = await log.submit(TaskSpec(kind="noop", queue="q"))
    stream = log.keys.events(0)
    assert not await wait_for(projector.store, stream, res.event_id, timeout=0.05)
    t0 = time.monotonic()
    await projector.step()
    assert await wait_for(projector.store, stream, res.event_id, timeout=1)
    assert time.monotonic() - t0 < 1
    assert (await projector.store.task(res.task_id)).status == "queued"
