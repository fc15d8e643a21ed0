"""Tools over the log: a task's timeline, a live tail, and verifying the
views against a replay from zero."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from eventcore.codec import Entry
from eventcore.log import EventLog
from projections.replay import Views, replay
from projections.store import ViewStore

__all__ = ["describe", "diff_views", "tail", "verify", "whole_log"]


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
