"""Tools over the log: a task's timeline, a live tail, and verifying the
views against a replay from zero."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
from redis.exceptions import ResponseError

from eventcore.codec import Entry
from eventcore.log import EventLog
from projections.replay import Views, replay
from projections.store import ViewStore, current_views, group_for

__all__ = [
    "RebuildResult",
    "describe",
    "diff_views",
    "drop_views",
    "rebuild",
    "tail",
    "verify",
    "whole_log",
]


def describe(entry: Entry[Any], *, as_json: bool = False) -> str:
    """One line for an event: time, stream id, type and its fields."""
    data = msgspec.to_builtins(entry.event)
    if as_json:
        return json.dumps({"stream": entry.stream, "id": entry.id, **data}, default=str)
    at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry.event.at))
    kind = data.pop("type")
    data.pop("at", None)
    data.pop("v", None)
    fields = " ".join(
        f"{k}={json.dumps(v, default=str)}" for k, v in data.items() if v not in (None, "", [], {})
    )
    return f"{at} {entry.id:>20} {kind:<22} {fields}"


async def whole_log(elog: EventLog) -> list[Entry[Any]]:
    """Every entry of every partition and of the node stream (bad ones parked)."""
    entries: list[Entry[Any]] = []
    for stream in [*(elog.keys.events(p) for p in elog.keys.all_partitions()), elog.keys.nodes()]:
        entries += await elog.read(stream, park_bad=True)
    return entries


async def tail(
    elog: EventLog, *, follow: bool, task: str | None = None, kind: str | None = None
) -> AsyncIterator[Entry[Any]]:
    """The log's events in order per stream; with ``follow``, then new ones as
    they come. Filtered by task id or event type prefix (``task.``,
    ``node.heartbeat``...)."""
    streams = [*(elog.keys.events(p) for p in elog.keys.all_partitions()), elog.keys.nodes()]
    if task:
        streams = [elog.keys.events(elog.keys.partition(task))]
    positions = dict.fromkeys(streams, "0-0")
    while True:
        got = await elog.tail(
            positions, count=1000, block_ms=1000 if follow else None, park_bad=True
        )
        for entry in got:
            positions[entry.stream] = entry.id
            if task and getattr(entry.event, "task_id", None) != task:
                continue
            if kind and not entry.event.type_name().startswith(kind):
                continue
            yield entry
        if not got and not follow:
            return


def diff_views(live: Views, expected: Views) -> list[str]:
    """Human-readable differences between stored views and a replay."""
    enc = msgspec.json.encode
    out: list[str] = []
    for name in ("tasks", "nodes", "queues", "stats_by"):
        a, b = getattr(live, name), getattr(expected, name)
        for key in sorted(set(a) | set(b), key=str):
            if key not in a:
                out.append(f"{name}[{key}]: missing from the views")
            elif key not in b:
                out.append(f"{name}[{key}]: in the views but not in the log")
            elif enc(a[key]) != enc(b[key]):
                out.append(f"{name}[{key}]: differs")
    if enc(live.stats) != enc(expected.stats):
        out.append("stats: differs")
    return out


async def verify(elog: EventLog, store: ViewStore) -> list[str]:
    """Replay the whole log into memory (a shadow of the views) and compare
    with the stored views; an empty list means they are equal.

    Run it when the projector has caught up (or stopped): views behind the log
    show up as differences.
    """
    expected = replay(await whole_log(elog))
    live = await store.load(expected.tasks)
    stored_ids = [
        k.decode().rsplit(":", 1)[1]
        async for k in elog.redis.scan_iter(match=store.task_key("*"), count=1000)
    ]
    extra = set(stored_ids) - set(expected.tasks)
    if extra:
        live = msgspec.structs.replace(
            live, tasks={**live.tasks, **(await store.load(extra)).tasks}
        )
    return diff_views(live, expected)


class RebuildResult(msgspec.Struct, frozen=True):
    views: str
    previous: str
    entries: int
    seconds: float


async def rebuild(
    elog: EventLog,
    *,
    batch: int = 5000,
    progress: Callable[[int, float], None] | None = None,
) -> RebuildResult:
    """Fold the whole log into a fresh view namespace, then switch readers and
    the live projector to it, and drop the old one.

    Live traffic keeps flowing: the rebuild reads through its own consumer
    group from the start of the log until it has caught up, then sets the
    pointer. A projector started with ``follow_pointer`` moves to the new
    namespace and carries on with the rebuild's group from where it stopped.
    """
    from projections.runner import Projector  # the runner imports this module's neighbours

    previous = await current_views(elog)
    view_ns = f"r{int(time.time() * 1000)}"
    projector = Projector(elog, ViewStore(elog, view_ns), batch=batch, consumer="rebuild")
    t0 = time.monotonic()
    while await projector.step(block_ms=None):
        if progress is not None:
            progress(projector.applied, time.monotonic() - t0)
    await elog.redis.set(elog.keys.view_pointer(), view_ns)
    await drop_views(elog, previous)
    return RebuildResult(view_ns, previous, projector.applied, time.monotonic() - t0)


async def drop_views(elog: EventLog, view_ns: str) -> int:
    """Delete a view namespace's keys and its projector group; returns keys deleted."""
    deleted = 0
    batch: list[bytes] = []
    async for key in elog.redis.scan_iter(match=elog.keys.view(view_ns, "*"), count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            deleted += await elog.redis.unlink(*batch)
            batch = []
    if batch:
        deleted += await elog.redis.unlink(*batch)
    group = group_for(view_ns)
    for stream in [*(elog.keys.events(p) for p in elog.keys.all_partitions()), elog.keys.nodes()]:
        with contextlib.suppress(ResponseError):  # no such group or stream: nothing to drop
            await elog.redis.xgroup_destroy(stream, group)
    return deleted
