"""Every Lua script of both libraries touches one slot, as Redis Cluster
requires: a workload that calls each script at least once records the keys
of every call and checks they hash to one slot. On a single server this
finds a cross-slot call from its call site; on the local cluster
(``EVENTCORE_TEST_SERVER=cluster``) the same calls also run there, where a
cross-slot one fails with CROSSSLOT."""

from __future__ import annotations

import hashlib
import io
import time
from typing import Any

import pytest
from redis.crc import key_slot

from eventcore.events import NodeHeartbeat, TaskProgress, TaskSpec
from eventcore.keys import Keys
from eventcore.log import EventLog, groups
from eventcore.log.scripts import Call, load_sources
from eventcore.nodes import append_node_event, mark_lost
from projections.export import export_log, import_log
from projections.leases import ShardLease
from projections.runner import Projector
from projections.scripts import ExpiringTask, ViewScripts, load_view_sources
from projections.snapshot import take_snapshot
from projections.store import ViewStore
from projections.trim import trim_log
from tests.replaykit import NODE, workload
from tests.test_reroute import _move, _stranded
from workers.reroute import waiting_entries

SOURCES = {**load_sources(), **load_view_sources()}


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, list[str]]]:
    """(script name, keys) of every script call made while the test runs."""
    names = {hashlib.sha1(src.encode()).hexdigest(): name for name, src in SOURCES.items()}
    seen: list[tuple[str, list[str]]] = []
    init = Call.__init__

    def record(self: Call[Any], script: Any, keys: Any, *args: Any, **kw: Any) -> None:
        init(self, script, keys, *args, **kw)
        seen.append((names[script.sha], list(keys)))

    monkeypatch.setattr(Call, "__init__", record)
    return seen


async def test_every_script_call_touches_one_slot(
    log: EventLog, calls: list[tuple[str, list[str]]]
) -> None:
    keys = log.keys
    await workload(log)  # submit, claim, settle, node_event
    # claim, renew, append_held, append
    task = (await log.submit(TaskSpec(kind="noop", queue="q"))).task_id
    p = keys.partition(task)
    stream = keys.work(p, "q", "normal")
    got = await groups.claim_new(log.scripts, keys.cancels(p), [stream], log.group, "w2", 10)
    [entry] = [e for e in got.entries if e.task_id == task]
    await groups.renew(log.redis, log.scripts, stream, log.group, "w2", [entry.id])
    await log.append_held("w2", entry, (TaskProgress(task_id=task, attempt=1, progress=0.5),))
    await log.append(TaskProgress(task_id=task, attempt=1, progress=0.6))
    # request_cancel, release_due
    later = await log.submit(TaskSpec(kind="noop", queue="q"), run_at=time.time() + 60)
    await log.release_due(now=time.time() + 120)
    await log.request_cancel(later.task_id)
    # mark_lost
    await append_node_event(log, NodeHeartbeat(node="gone", free_slots=1), now=time.time() - 100)
    assert await mark_lost(log, "gone", silent_for=10, noticed_by=NODE)
    # reroute
    stranded = await _stranded(log)
    [w] = await waiting_entries(log, ["gpu"])
    await log.reroute([_move(log, stranded, w.entry_id, w.submitted)])
    # write_views with a lease, renew_lease, release_lease
    lease = ShardLease(log, "0", "live", holder="t")
    assert await lease.take()
    leased = Projector(log, lease=lease)
    while await leased.step():
        pass
    assert await lease.renew() and await lease.release()
    # write_views, publish_snapshot, trim_stream, prune_done
    projector = Projector(log)
    while await projector.step():
        pass
    # expire_tasks
    store = ViewStore(log)
    task_id = (await store.task_ids())[0]
    shard = store.shard_of(task_id)
    view = await log.redis.get(shard.task_key(task_id))
    gone = ExpiringTask(shard.task_key(task_id), view, task_id, [shard.index_key("all")])
    assert await ViewScripts(log.redis).expire_tasks(
        lease_key=shard.lease_key, token="", tasks=[gone]
    )
    await take_snapshot(log)
    await trim_log(log)
    # import_entries
    out = io.BytesIO()
    await export_log(log, out)
    await import_log(
        EventLog(log.redis, Keys(keys.namespace + "i", keys.partitions)),
        [line for line in out.getvalue().splitlines()],
    )

    cross = [(name, k) for name, k in calls if len({key_slot(x.encode()) for x in k}) > 1]
    assert cross == []
    assert {name for name, _ in calls} == set(SOURCES)
