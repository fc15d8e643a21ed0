"""A worker that reads several partitions: entry ids are unique per stream
only, so the entries a worker holds are told apart by stream and id."""

from __future__ import annotations

import time

from redis.asyncio import Redis

from eventcore.events import TaskClaimed, TaskSpec
from eventcore.ids import task_id_in_partition
from eventcore.keys import Keys
from eventcore.log import EventLog, groups
from tests.workerkit import fast_settings, make_worker, running, spec, wait_ended


async def test_entries_with_one_id_in_two_partitions_keep_their_own_leases(
    r: Redis, namespace: str
) -> None:
    """Regression: the worker kept the entries it holds by id alone, so the end
    of one task dropped the lease of a task whose entry had the same id in
    another partition; that task was then reclaimed and ran twice."""
    settings = fast_settings(namespace, partitions=2)
    log = EventLog(r, Keys(namespace, 2))
    # Both work streams hand out the same next id (the ids of one millisecond
    # in two streams collide all the time under load; here they always do).
    ahead = f"{int(time.time() * 1000) + 60_000}-0"
    for p in (0, 1):
        stream = log.keys.work(p, "q", "normal")
        await groups.ensure_group(r, stream, log.group)
        await r.execute_command("XSETID", stream, ahead)
    short = await log.submit(
        TaskSpec(kind="sleep", queue="q", params={"seconds": 30}, hard_timeout=0.3),
        task_id=task_id_in_partition(0, 2),
    )
    long = await log.submit(spec("sleep", seconds=2.0), task_id=task_id_in_partition(1, 2))
    [(id0, _)] = await r.xrange(log.keys.work(0, "q", "normal"))
    [(id1, _)] = await r.xrange(log.keys.work(1, "q", "normal"))
    assert id0 == id1
    async with running(make_worker(log, settings, "w1")):
        assert await wait_ended(log, short.task_id) == "task.timed_out"
        assert await wait_ended(log, long.task_id) == "task.succeeded"
    claims = [e.event for e in await log.history(long.task_id) if isinstance(e.event, TaskClaimed)]
    assert [c.deliveries for c in claims] == [1]  # one delivery: its lease was never lost
