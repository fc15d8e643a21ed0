"""Retention (:mod:`projections.retention`): finished tasks leave the Redis
views once they are older than ``views.retention`` and the SQL history has
them, never before; the scheduled snapshot leaves them out and the log is
trimmed below ``log.retention`` without passing what the SQL projector has
not read; ``replay verify`` counts a retired task as no difference."""

from __future__ import annotations

import asyncio
import time

import sqlalchemy as sa

from eventcore.log import EventLog
from eventcore.transitions import TaskStatus
from history.database import Database
from history.follower import SqlProjector
from history.schema import tasks as tasks_table
from projections.pool import ProjectorPool
from projections.read import TaskFilter, list_tasks
from projections.retention import Retention, expire_views, is_retired
from projections.runner import Projector
from projections.scripts import ExpiringTask, ViewScripts
from projections.snapshot import latest_head, snapshot_tasks
from projections.store import ViewStore
from projections.tools import verify_at
from projections.trim import trim_marks
from projections.views import TaskView
from tests.replaykit import claim, finish, submit, workload
from tests.sqlkit import drain

LATER = 3600.0  # a cutoff this far ahead makes every finished task "old"


async def _fold(log: EventLog) -> ViewStore:
    projector = Projector(log)
    while await projector.step():
        pass
    return ViewStore(log)


async def _sql(log: EventLog, db: Database) -> SqlProjector:
    sql = SqlProjector(log, db)
    await drain(sql)
    await sql.publish()
    return sql


async def _listed(store: ViewStore) -> set[str]:
    page = await list_tasks(store, TaskFilter(), limit=500)
    return {v.task_id for v in page.tasks}


async def _expire_all(log: EventLog, store: ViewStore, cutoff: float) -> int:
    return sum(
        [
            await expire_views(log, store.shard(s), token="", cutoff=cutoff)
            for s in log.keys.view_shards()
        ]
    )


async def test_finished_tasks_the_sql_history_has_leave_the_views(
    log: EventLog, sql_db: Database
) -> None:
    await workload(log, 8, leave=2)  # 6 finished, 2 waiting
    store = await _fold(log)
    views = await store.tasks(await store.task_ids())
    finished = {t for t, v in views.items() if v.finished_at is not None}
    waiting = set(views) - finished
    assert len(finished) == 6
    # No SQL projector yet: nothing may leave, however old.
    assert await _expire_all(log, store, time.time() + LATER) == 0
    await _sql(log, sql_db)
    # More tasks end after the SQL history was written: they must stay.
    late = await submit(log, 2)
    for entry in await claim(log, 4):
        await finish(log, entry)
    store = await _fold(log)
    # Not old enough: nothing leaves.
    assert await _expire_all(log, store, time.time() - LATER) == 0
    assert await _expire_all(log, store, time.time() + LATER) == len(finished)
    left = set(await store.task_ids())
    assert left == waiting | set(late)
    assert await _listed(store) == left
    with sql_db.begin() as conn:
        rows = set(conn.execute(sa.select(tasks_table.c.task_id)).scalars())
    assert finished <= rows
    # A second pass finds nothing more to do.
    assert await _expire_all(log, store, time.time() + LATER) == 0
    # verify finds them missing, unless told the views' retention.
    missing = (await verify_at(log, store)).problems
    assert sorted(missing) == sorted(f"tasks[{t}]: missing from the views" for t in finished)
    ahead = lambda: time.time() + LATER + 60  # noqa: E731
    assert (await verify_at(log, store, retention=60.0, clock=ahead)).problems == []


async def test_a_view_changed_since_it_was_read_stays(log: EventLog) -> None:
    await workload(log, 2, leave=0)
    store = await _fold(log)
    task_id = (await store.task_ids())[0]
    shard = store.shard_of(task_id)
    raw = await log.redis.get(shard.task_key(task_id))
    stale = ExpiringTask(shard.task_key(task_id), raw + b"x", task_id, [shard.index_key("all")])
    scripts = ViewScripts(log.redis)
    assert await scripts.expire_tasks(lease_key=shard.lease_key, token="", tasks=[stale]) == 0
    assert await store.task(task_id) is not None
    same = stale._replace(view=raw)
    assert await scripts.expire_tasks(lease_key=shard.lease_key, token="", tasks=[same]) == 1
    assert await store.task(task_id) is None


def test_the_rule() -> None:
    done = TaskView(
        task_id="t", status=TaskStatus.SUCCEEDED, finished_at=100.0, last_event_id="5-0"
    )
    assert is_retired(done, 101.0, "5-0")
    assert is_retired(done, 101.0, "6-0")
    assert not is_retired(done, 100.0, "6-0")  # not older than the cutoff
    assert not is_retired(done, 101.0, "4-9")  # the SQL history lacks its last event
    assert not is_retired(done, 101.0, None)  # no SQL history at all
    running = TaskView(task_id="t", status=TaskStatus.RUNNING, last_event_id="5-0")
    assert not is_retired(running, 1e12, "9-0")


async def test_projectors_sweep_snapshot_and_trim_on_schedule(
    log: EventLog, sql_db: Database
) -> None:
    await workload(log, 10, leave=2)
    await _sql(log, sql_db)
    later = await submit(log, 3)  # after the SQL history: kept in Redis and in the log
    clock_ahead = lambda: time.time() + LATER  # noqa: E731
    retention = Retention(views=60.0, sweep_every=0.05, log=60.0, snapshot_every=600.0)
    pool = ProjectorPool(log, lease_ms=1500, block_ms=50, retention=retention, clock=clock_ahead)
    stop = asyncio.Event()
    running = asyncio.create_task(pool.run(stop))
    try:
        deadline = time.monotonic() + 20
        while (pool.expired < 8 or pool.log_turns < 1) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        # the turn's snapshot and trim run in the sweep: wait for its result
        while await latest_head(log) is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(running, 10)
    assert pool.expired == 8 and pool.log_turns == 1
    store = ViewStore(log)
    left = set(await store.task_ids())
    assert len(left) == 2 + 3 and set(later) <= left
    head = await latest_head(log)
    assert head is not None
    in_snapshot: set[str] = set()
    async for chunk in snapshot_tasks(log, head):
        in_snapshot |= set(chunk)
    assert in_snapshot == left  # the retired tasks are left out of the snapshot too
    marks = await trim_marks(log)
    # Trimmed up to what the SQL history has read, not past it: the later
    # submissions are still in the log for it.
    for stream, mark in marks.items():
        sql_at = {
            g["name"].decode(): g["last-delivered-id"].decode()
            for g in await log.redis.xinfo_groups(stream)
        }["sql"]
        assert mark == sql_at
    assert marks  # something was trimmed
    # The views equal the snapshot and the log after it.
    assert (await verify_at(log, store)).problems == []
