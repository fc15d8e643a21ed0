"""As-of queries: the views as they were at a time or an entry id, from the
first entry or from a snapshot, and what happens once the log is trimmed."""

from __future__ import annotations

import asyncio
import json
import os

import msgspec
import pytest

from eventcore.connection import connect
from eventcore.errors import EventcoreError
from eventcore.events import NodeHeartbeat, TaskProgress
from eventcore.ids import stream_id_key
from eventcore.keys import Keys
from eventcore.log import EventLog
from eventcore.nodes import append_node_event
from projections.asof import task_as_of, views_as_of
from projections.points import MAX_SEQ, Point, parse_point
from projections.replay import replay
from projections.snapshot import take_snapshot
from projections.tools import log_after
from projections.trim import trim_log
from tests.replaykit import NODE, assert_same, claim, cli, finish, submit, workload


def _at(entry_id: str) -> Point:
    return Point(entry_id, entry_id=entry_id)


async def _prefix(log: EventLog, end: str):
    return replay(
        [e for e in await log_after(log, {}) if stream_id_key(e.id) <= stream_id_key(end)]
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1714564800000-3", Point("1714564800000-3", entry_id="1714564800000-3")),
        ("1714564800", Point("1714564800", ms=1714564800000)),
        ("1714564800.25", Point("1714564800.25", ms=1714564800250)),
        ("2024-05-01T12:00:00Z", Point("2024-05-01T12:00:00Z", ms=1714564800000)),
        ("2024-05-01T12:00:00", Point("2024-05-01T12:00:00", ms=1714564800000)),
        ("2024-05-01T14:00:00+02:00", Point("2024-05-01T14:00:00+02:00", ms=1714564800000)),
    ],
)
def test_points_parse(text: str, expected: Point) -> None:
    assert parse_point(text) == expected


def test_point_ids() -> None:
    p = parse_point("2024-05-01T12:00:00Z")
    assert p.start_id == "1714564800000-0" and p.end_id == f"1714564800000-{MAX_SEQ}"
    assert p.describe() == "2024-05-01T12:00:00.000Z"
    q = parse_point("5-1")
    assert q.start_id == q.end_id == "5-1" and q.describe() == "5-1"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("yesterday", "not a time or an entry id"),
        ("-5", "finite number >= 0"),
        ("nan", "finite number >= 0"),
        ("1714564800000", "for milliseconds give a stream id (1714564800000-0)"),
        ("1-99999999999999999999", "out of range"),
    ],
)
def test_bad_points_name_the_value(text: str, why: str) -> None:
    with pytest.raises(EventcoreError) as err:
        parse_point(text, "--until")
    assert f"bad --until value {text!r}" in str(err.value) and why in str(err.value)


async def test_views_as_of_an_id_and_a_time_equal_a_replay_of_the_prefix(r, namespace) -> None:
    log = EventLog(r, Keys(namespace, 2))
    await workload(log, 10)
    entries = await log_after(log, {})
    middle = sorted(entries, key=lambda e: stream_id_key(e.id))[len(entries) // 2].id
    got = await views_as_of(log, _at(middle))
    assert_same(got, await _prefix(log, middle))
    assert got.queues["q"].submitted == 10
    assert_same(
        await views_as_of(log, _at(entries[-1].id.split("-")[0] + "-0")),
        await _prefix(log, entries[-1].id.split("-")[0] + "-0"),
    )
    # a time: everything written up to the end of that millisecond
    ms = stream_id_key(middle)[0]
    assert_same(
        await views_as_of(log, Point(str(ms / 1000), ms=ms)),
        await _prefix(log, f"{ms}-{MAX_SEQ}"),
    )
    assert (await views_as_of(log, Point("0", ms=0))).nodes == {}


async def test_task_as_of(r, namespace) -> None:
    log = EventLog(r, Keys(namespace))
    (tid,) = await submit(log, 1)
    (entry,) = await claim(log, 1)
    await finish(log, entry)
    history = await log.history(tid)
    submitted, *_, succeeded = (e.id for e in history)
    assert (await task_as_of(log, tid, _at(submitted))).status == "queued"
    view = await task_as_of(log, tid, _at(succeeded))
    assert view.status == "succeeded" and view.last_event_id == succeeded
    assert (await task_as_of(log, tid, _at(history[-2].id))).status == "running"
    with pytest.raises(EventcoreError, match=f"task {tid} did not exist yet as of 1-0"):
        await task_as_of(log, tid, _at("1-0"))
    unknown = "0190a8a0-0000-7000-8000-000000000009"
    with pytest.raises(EventcoreError, match=f"no task {unknown} in the log"):
        await task_as_of(log, unknown, _at(succeeded))
    with pytest.raises(EventcoreError, match="no task 'nope': task ids are UUIDv7s"):
        await task_as_of(log, "nope", _at(succeeded))


async def test_as_of_after_a_trim_starts_from_the_snapshot(r, namespace) -> None:
    log = EventLog(r, Keys(namespace))
    tasks = await workload(log, 8, leave=2)
    head = await take_snapshot(log)
    await log.append(TaskProgress(task_id=tasks[0], attempt=1, progress=0.5))
    for entry in await claim(log, 2):
        await finish(log, entry)
    await append_node_event(log, NodeHeartbeat(node=NODE, free_slots=7))
    entries = await log_after(log, {})
    later = [e.id for e in entries if e.id not in head.watermark.values()][-3]
    before_trim = await _prefix(log, later)
    from_snapshot = await views_as_of(log, _at(later))  # only the tasks changed since
    assert set(from_snapshot.tasks) < set(before_trim.tasks)
    assert_same(
        msgspec.structs.replace(from_snapshot, tasks={}),
        msgspec.structs.replace(before_trim, tasks={}),
    )
    early = entries[1].id
    early_task = await task_as_of(log, tasks[0], _at(early))

    await trim_log(log)
    after_trim = await views_as_of(log, _at(later))
    assert after_trim.nodes == before_trim.nodes and after_trim.queues == before_trim.queues
    assert after_trim.stats == before_trim.stats and after_trim.stats_by == before_trim.stats_by
    for tid in tasks:
        # every task: its history now starts after the trim, the snapshot fills in
        assert await task_as_of(log, tid, _at(later)) == before_trim.tasks[tid]
    # before the snapshot, the trimmed log can no longer answer
    with pytest.raises(EventcoreError, match="the log before it was trimmed; it can answer"):
        await views_as_of(log, _at(early))
    with pytest.raises(EventcoreError, match="the start of its history was trimmed"):
        await task_as_of(log, tasks[0], _at(early))
    assert early_task.status == "queued"


def test_as_of_command(redis_url: str) -> None:
    ns = "cli" + os.urandom(4).hex()
    env = {"REDIS_URL": redis_url, "EVENTCORE_NAMESPACE": ns}

    async def seed() -> tuple[str, str, str]:
        client = await connect(redis_url)
        try:
            log = EventLog(client, Keys(ns))
            (tid,) = await submit(log, 1)
            first = (await log.history(tid))[0].id
            await workload(log, 3, leave=0)
            await append_node_event(log, NodeHeartbeat(node=NODE, free_slots=1))
            # an id cuts every stream; the newest one is after everything
            return tid, first, max((e.id for e in await log_after(log, {})), key=stream_id_key)
        finally:
            await client.aclose()

    tid, first, last = asyncio.run(seed())
    task = cli("as-of", tid, "--at", first, env=env)
    assert task.returncode == 0, task.stderr
    assert json.loads(task.stdout)["status"] == "queued"
    now = cli("as-of", tid, "--at", last, env=env)
    assert json.loads(now.stdout)["status"] == "failed"  # the first of the workload fails
    stats = cli("as-of", "--stats", "--at", "2100-01-01T00:00:00Z", env=env)
    assert stats.returncode == 0, stats.stderr
    data = json.loads(stats.stdout)
    totals = data["global"]["totals"]
    assert totals["succeeded"] + totals["failed"] == 3
    assert [(s["queue"], s["kind"]) for s in data["by_queue_kind"]] == [("q", "noop")]
    nodes = json.loads(cli("as-of", "--nodes", "--at", last, env=env).stdout)
    assert nodes[NODE]["processed"] == 3
    queues = json.loads(cli("as-of", "--queues", "--at", first, env=env).stdout)
    assert queues["q"]["submitted"] == 1

    unknown = "0190a8a0-0000-7000-8000-000000000009"
    for args, words in [
        ((unknown, "--at", last), f"no task {unknown} in the log"),
        (("--nodes", "--at", "soon"), "bad --at value 'soon'"),
        (("--at", last), "give a task id, or one of --nodes, --queues, --stats"),
        ((tid, "--at", "1-0"), f"task {tid} did not exist yet as of 1-0"),
    ]:
        res = cli("as-of", *args, env=env)
        assert res.returncode == 1 and words in res.stderr, (args, res.stderr)
        assert "Traceback" not in res.stderr and res.stderr.count("\n") == 1


def test_views_encode_as_json() -> None:
    # what `as-of` prints must be plain JSON for every view type
    from projections.views import NodeView, QueueView, StatsView, TaskView

    for view in (TaskView(task_id="t"), NodeView(node="n"), QueueView(queue="q"), StatsView()):
        assert json.loads(msgspec.json.encode(view))
