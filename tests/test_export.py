"""Export of the log as JSON Lines and import of it: lossless, idempotent,
and strict about bad lines."""

from __future__ import annotations

import asyncio
import io
import json
import os
from pathlib import Path

import msgspec
import pytest

from eventcore.codec import encode
from eventcore.connection import connect
from eventcore.errors import EventcoreError
from eventcore.events import ControlIssued, TaskProgress
from eventcore.ids import stream_id_key as key
from eventcore.keys import Keys
from eventcore.log import EventLog
from projections.export import export_log, export_streams, import_log
from projections.points import Point
from projections.replay import replay
from projections.runner import Projector
from projections.scripts import ViewScripts
from projections.store import ViewStore
from projections.tools import log_after, verify
from tests.replaykit import assert_same, cli, submit, workload


async def _export(log: EventLog, **kw) -> bytes:
    out = io.BytesIO()
    await export_log(log, out, **kw)
    return out.getvalue()


async def _raw(log: EventLog) -> dict[str, list]:
    """Every exported stream's entries as stored, by name without the namespace."""
    out = {}
    for stream in await export_streams(log):
        out[stream[len(log.keys.namespace) + 1 :]] = await log.redis.xrange(stream)
    return out


def _renamed(log: EventLog, source: EventLog, entries):
    """Entries of ``elog`` under ``source``'s stream names (views key their
    positions by stream)."""
    cut = len(log.keys.namespace)
    return [(source.keys.namespace + e.stream[cut:], e.id, e.event) for e in entries]


async def test_export_import_round_trip_into_a_new_namespace(r, namespace) -> None:
    source = EventLog(r, Keys(namespace, 2))
    tasks = await workload(source, 15)
    await source.append(ControlIssued(command_id="c-1", target="w9", kind="ping"))
    await source.append(ControlIssued(command_id="c-2", target="*", kind="pause"))
    # an entry of an older writer with an extra field, and one that does not decode
    p = source.keys.partition(tasks[0])
    await r.xadd(
        source.keys.events(p),
        {
            "task": tasks[0],
            "e": encode(TaskProgress(task_id=tasks[0], attempt=1, progress=0.1)),
            "x": b"\xff",
        },
    )
    await r.xadd(source.keys.nodes(), {"node": "w1", "e": b"\x00junk"})
    data = await _export(source)
    lines = [json.loads(x) for x in data.splitlines()]
    ids = [tuple(map(int, x["id"].split("-"))) for x in lines]
    assert ids == sorted(ids)  # one history, in id order across streams
    assert {x["stream"] for x in lines} == {
        source.keys.relative_name(source.keys.events(0)),
        source.keys.relative_name(source.keys.events(1)),
        "nodes",
        "ctl:all",
        "ctl:node:w9",
    }
    assert sum("raw" in x for x in lines) == 2 and sum("event" not in x for x in lines) == 1
    first = next(x for x in lines if x["event"]["type"] == "task.submitted")
    assert first["event"]["spec"]["kind"] == "noop"

    target = EventLog(r, Keys(namespace + "b", 2))
    res = await import_log(target, io.BytesIO(data))
    assert (res.added, res.present, res.trimmed, res.lines) == (len(lines), 0, 0, len(lines))
    assert await _raw(target) == await _raw(source)  # identical entries, ids and fields
    assert_same(
        replay(_renamed(target, source, await log_after(target, {}))),
        replay(await log_after(source, {})),
    )
    # outcomes are recorded, so a cancel of an imported finished task says it ended
    ended = [t for t in tasks if await source.ended_as(t)]
    assert ended and all([await target.ended_as(t) == await source.ended_as(t) for t in ended])
    assert (await target.request_cancel(ended[0])).outcome == "done"

    again = await import_log(target, io.BytesIO(data))
    assert (again.added, again.present) == (0, len(lines))  # idempotent
    # an export written before partition tags were spread names them {pN}
    old_names = [
        {**x, "stream": f"{{p{p}}}:events"}
        for x in lines
        for p in (0, 1)
        if x["stream"] == source.keys.relative_name(source.keys.events(p))
    ]
    assert old_names
    legacy = await import_log(target, [json.dumps(x).encode() for x in old_names])
    assert (legacy.added, legacy.present) == (0, len(old_names))  # the same streams
    # and the projector of the new namespace folds the imported log to the same views
    projector = Projector(target)
    while await projector.step(block_ms=None):
        pass
    assert projector.parked == 1
    assert await verify(target, ViewStore(target)) == []


async def test_export_between_two_points(r, namespace) -> None:
    log = EventLog(r, Keys(namespace))
    await workload(log, 6)
    everything = [json.loads(x) for x in (await _export(log)).splitlines()]
    lo, hi = everything[3]["id"], everything[-3]["id"]
    part = [
        json.loads(x)
        for x in (
            await _export(log, since=Point(lo, entry_id=lo), until=Point(hi, entry_id=hi))
        ).splitlines()
    ]
    # Every entry of every stream between the two ids, both included: entries of
    # other streams with the same id as an end (same millisecond) count too.
    inside = [x for x in everything if key(lo) <= key(x["id"]) <= key(hi)]
    assert len(inside) >= len(everything) - 5
    assert [(x["stream"], x["id"]) for x in part] == [(x["stream"], x["id"]) for x in inside]
    ms = int(lo.split("-")[0])
    by_time = (await _export(log, until=Point("t", ms=ms - 1))).splitlines()
    assert all(int(json.loads(x)["id"].split("-")[0]) < ms for x in by_time)


async def test_a_bad_line_stops_the_import_and_names_the_line(r, namespace) -> None:
    source = EventLog(r, Keys(namespace))
    await submit(source, 4)
    lines = (await _export(source)).splitlines()
    target = EventLog(r, Keys(namespace + "b"))
    broken = [lines[0], b"", lines[1], b'{"stream": "{p0}:events", "id": ', lines[2]]
    with pytest.raises(
        EventcoreError, match=r"^line 4: not an export entry: .*so far 2 entries added"
    ):
        await import_log(target, broken, batch=2)
    assert await r.xlen(target.keys.events(0)) == 2  # the lines before it, nothing after

    cases = [
        (
            b'{"stream": "blob:abc", "id": "1-1", "raw": {"e": "AA=="}}',
            "stream 'blob:abc' is not a log stream",
        ),
        (
            b'{"stream": "{p7}:events", "id": "1-1", "raw": {"e": "AA=="}}',
            "'{p7}:events' is not a log stream",
        ),
        (
            b'{"stream": "nodes", "id": "0-0", "raw": {"e": "AA=="}}',
            "'0-0' is not a stream entry id",
        ),
        (b'{"stream": "nodes", "id": "1-1"}', "neither 'event' nor 'raw'"),
        (b"[1, 2]", "not an export entry"),
    ]
    event = json.loads(lines[0])["event"]
    wrong = {"stream": "nodes", "id": "1-1", "event": event}
    cases.append(
        (json.dumps(wrong).encode(), "a task.submitted event does not belong in stream 'nodes'")
    )
    for line, words in cases:
        with pytest.raises(EventcoreError, match="line 1: ") as err:
            await import_log(target, [line])
        assert words in str(err.value)


async def test_import_keeps_ids_or_refuses(r, namespace) -> None:
    source = EventLog(r, Keys(namespace))
    await submit(source, 12)  # some land outside partition 0 of 3 (all 12 in it: 1 in 531,441)
    data = await _export(source)
    # a namespace with newer entries of its own cannot take older ids
    busy = EventLog(r, Keys(namespace + "b"))
    await asyncio.sleep(0.002)
    await submit(busy, 1)
    with pytest.raises(EventcoreError, match=r"line 1: \{p0\}:events already holds entries up to"):
        await import_log(busy, io.BytesIO(data))
    # same id, other content: a conflict, not a silent skip
    lines = data.splitlines()
    changed = json.loads(lines[1])
    changed["event"]["spec"]["params"] = {"i": 99}
    fresh = EventLog(r, Keys(namespace + "c"))
    await import_log(fresh, io.BytesIO(data))
    with pytest.raises(EventcoreError, match=r"line 1: entry .* already exists with other content"):
        await import_log(fresh, [json.dumps(changed).encode()])
    # a different partition count would put tasks in other streams
    other = EventLog(r, Keys(namespace + "d", 3))
    moved = [x for x in lines if json.loads(x)["stream"] == "{p0}:events"]
    with pytest.raises(EventcoreError, match="same number of partitions"):
        for line in moved:
            await import_log(other, [line])


async def test_reimport_after_a_trim_skips_what_was_trimmed(r, namespace) -> None:
    from projections.snapshot import take_snapshot
    from projections.trim import trim_log

    log = EventLog(r, Keys(namespace))
    await workload(log, 5)
    data = await _export(log)
    await take_snapshot(log)
    trimmed = sum(s.trimmed for s in (await trim_log(log)).streams)
    assert trimmed > 0
    res = await import_log(log, io.BytesIO(data))
    assert res.added == 0 and res.trimmed == trimmed and res.present == res.lines - trimmed


async def test_import_script_refuses_bad_arguments_and_writes_nothing(r, namespace) -> None:
    from redis.exceptions import ResponseError

    log = EventLog(r, Keys(namespace))
    stream = log.keys.events(0)
    good = ["1-1", "", "", 1, "e", "x"]
    for args in (
        [2, *good],  # count says two
        [1, "x-1", "", "", 1, "e", "x"],
        [1, "1-1", "", "task.succeeded", 1, "e", "x"],  # outcome without a task
        [1, "1-1", "", "", 0],
        [1, *good, "extra"],
    ):
        with pytest.raises(ResponseError, match="eventcore import_entries"):
            await ViewScripts(r).raw(
                "import_entries", [stream, log.keys.trim_mark(stream), log.keys.done(0)], args
            )
    assert await r.keys(f"{namespace}:*") == []


def test_export_and_import_commands(redis_url: str, tmp_path: Path) -> None:
    ns = "cli" + os.urandom(4).hex()
    env = {"REDIS_URL": redis_url, "EVENTCORE_NAMESPACE": ns}

    async def seed() -> None:
        client = await connect(redis_url)
        try:
            log = EventLog(client, Keys(ns))
            await workload(log, 4)
        finally:
            await client.aclose()

    asyncio.run(seed())
    out = tmp_path / "log.jsonl"
    exported = cli("events", "export", "-o", str(out), env=env)
    assert exported.returncode == 0, exported.stderr
    assert "exported 12 entries of 4 streams" in exported.stderr
    assert len(out.read_bytes().splitlines()) == 12
    assert not (tmp_path / "log.jsonl.partial").exists()
    to_stdout = cli("events", "export", "--since", "0", env=env)
    assert to_stdout.stdout.encode() == out.read_bytes()

    env_b = {**env, "EVENTCORE_NAMESPACE": ns + "b"}
    imported = cli("events", "import", str(out), env=env_b)
    assert imported.returncode == 0, imported.stderr
    assert "12 entries added, 0 already there, 0 below the trim mark" in imported.stdout
    again = cli("events", "import", "-", env=env_b, stdin=out.read_text())
    assert "0 entries added, 12 already there" in again.stdout

    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(out.read_bytes() + b"not json\n")
    failed = cli("events", "import", str(bad), env={**env, "EVENTCORE_NAMESPACE": ns + "c"})
    assert failed.returncode == 1 and "line 13: not an export entry" in failed.stderr
    assert "so far 12 entries added" in failed.stderr and "Traceback" not in failed.stderr
    missing = cli("events", "import", str(tmp_path / "nope.jsonl"), env=env_b)
    assert (
        missing.returncode == 1
        and "cannot read" in missing.stderr
        and "nope.jsonl" in missing.stderr
    )
    bad_since = cli("events", "export", "--since", "last week", env=env)
    assert bad_since.returncode == 1 and "bad --since value 'last week'" in bad_since.stderr
    msgspec.json.decode(out.read_bytes().splitlines()[0])
