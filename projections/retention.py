"""Retention: Redis holds the present, the SQL history the past.

Two sweeps, both run by the projectors (:class:`~projections.pool.ProjectorPool`):

- **Views** (``views.retention``): a finished task leaves its shard's views
  and indexes once it finished longer ago than the retention *and* the SQL
  projector has written its last event (the ``sql`` group of its partition
  stream, :data:`eventcore.keys.SQL_GROUP`, is at or past it). The shard's
  holder does it, under its lease, with one script per batch that takes a
  task out only if its view is still the one it read. Without a SQL
  projector nothing leaves: nothing else would keep it. ``GET /v1/tasks/{id}``
  answers such a task from SQL.
- **Log** (``log.retention``, ``log.snapshot_every``): once a period, one
  projector (the node shard's holder, taking the period's turn with
  ``SET NX PX``) takes a snapshot, leaving out the tasks the views no longer
  keep by the same rule, and trims every log stream below ``log.retention``
  ago, never past the snapshot or what any consumer group (the SQL
  projector's too) has not read; then the ``done`` outcomes of the tasks
  whose events are gone are forgotten.

So Redis holds about ``retention`` worth of tasks, whatever has run before.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

import msgspec
from redis.exceptions import ResponseError

from eventcore.codec import text
from eventcore.keys import SQL_GROUP
from eventcore.log import EventLog
from eventcore.log.eventlog import stream_id_at
from eventcore.transitions import TERMINAL
from projections.points import id_lt, log_streams
from projections.scripts import ExpiringTask, ViewScripts
from projections.snapshot import take_snapshot
from projections.store import LeaseLost, ShardStore
from projections.trim import TrimResult, trim_log
from projections.views import TaskView

__all__ = [
    "Retention",
    "expire_views",
    "is_retired",
    "retire_log",
    "sql_behind",
    "sql_positions",
]

logger = logging.getLogger(__name__)

_task = msgspec.msgpack.Decoder(TaskView)
_TERMINAL = sorted(s.value for s in TERMINAL)


class Retention(msgspec.Struct, frozen=True, kw_only=True):
    """The retention settings a projector works by (seconds; 0 = off)."""

    views: float = 0.0
    sweep_every: float = 60.0
    log: float = 0.0
    snapshot_every: float = 0.0


def is_retired(view: TaskView, cutoff: float, written: str | None) -> bool:
    """Whether a task may leave the views: it ended before ``cutoff`` and the
    SQL history has written its stream up to ``written``, at or past its
    last event (``None``: no SQL projector on the stream)."""
    return (
        view.status in TERMINAL
        and view.finished_at is not None
        and view.finished_at < cutoff
        and written is not None
        and bool(view.last_event_id)
        and not id_lt(written, view.last_event_id)
    )


async def sql_positions(log: EventLog, streams: Iterable[str]) -> dict[str, str]:
    """How far the SQL projector has written, per stream that has its group."""
    out: dict[str, str] = {}
    for stream in streams:
        try:
            groups = await log.redis.xinfo_groups(stream)
        except ResponseError:  # no such stream yet
            continue
        for group in groups:
            if text(group["name"]) == SQL_GROUP:
                out[stream] = text(group["last-delivered-id"])
    return out


async def sql_behind(log: EventLog, cap: int = 10_001) -> int | None:
    """How many log entries the SQL projector has not written yet (at most
    ``cap``); ``None`` when no SQL projector has written anything."""
    streams = log_streams(log.keys)
    positions = await sql_positions(log, streams)
    if not positions:
        return None
    behind = 0
    for stream in streams:
        start = "(" + positions[stream] if stream in positions else "-"
        behind += len(await log.redis.xrange(stream, min=start, max="+", count=cap - behind))
        if behind >= cap:
            break
    return behind


async def expire_views(
    log: EventLog,
    store: ShardStore,
    *,
    token: str,
    cutoff: float,
    batch: int = 500,
    limit: int = 100_000,
    scripts: ViewScripts | None = None,
) -> int:
    """Take the retired tasks (:func:`is_retired`) out of one shard's views;
    how many. Looks at tasks submitted before ``cutoff`` in the indexes of
    the final statuses, ``batch`` at a time, at most ``limit`` a call."""
    if len(store.streams) != 1:
        return 0  # the node shard holds no task views
    written = (await sql_positions(log, store.streams)).get(store.streams[0])
    if written is None:
        return 0
    scripts = scripts or ViewScripts(log.redis)
    redis = log.redis
    cutoff_ms = int(cutoff * 1000)
    removed = 0
    for status in _TERMINAL:
        index = store.index_key("status", status)
        offset = 0
        while removed < limit:
            ids = [
                text(i)
                for i in await redis.zrangebyscore(
                    index, "-inf", cutoff_ms, start=offset, num=batch
                )
            ]
            if not ids:
                break
            raws = await redis.execute_command("MGET", *[store.task_key(t) for t in ids])
            expiring = []
            for task_id, raw in zip(ids, raws):
                if raw is None:
                    continue
                view = _task.decode(raw)
                if is_retired(view, cutoff, written):
                    expiring.append(
                        ExpiringTask(
                            store.task_key(task_id), raw, task_id, sorted(store.index_keys(view))
                        )
                    )
            taken = 0
            if expiring:
                try:
                    taken = await scripts.expire_tasks(
                        lease_key=store.lease_key, token=token, tasks=expiring
                    )
                except ResponseError as exc:
                    if "LEASE" in str(exc):
                        raise LeaseLost(f"shard {store.shard}: {exc}") from None
                    raise
            removed += taken
            offset += len(ids) - taken
            if len(ids) < batch:
                break
    return removed


class LogRetired(msgspec.Struct, frozen=True):
    snapshot: str
    retired: int  # tasks left out of the snapshot
    trim: TrimResult


async def retire_log(
    log: EventLog,
    *,
    retention: Retention,
    clock: Callable[[], float] = time.time,
) -> LogRetired | None:
    """Take a snapshot without the retired tasks and trim the log below
    ``retention.log`` ago (see the module docstring); ``None``, doing
    nothing, while no log stream holds an entry that old."""
    now = clock()
    before = stream_id_at(now - retention.log)
    if not await _older_than(log, before):
        return None
    positions = await sql_positions(log, log_streams(log.keys))
    keys = log.keys
    dropped: list[TaskView] = []

    def retire(view: TaskView) -> bool:
        if retention.views <= 0:
            return False
        written = positions.get(keys.events(keys.partition(view.task_id)))
        if is_retired(view, now - retention.views, written):
            dropped.append(view)
            return True
        return False

    head = await take_snapshot(log, retire=retire)
    trim = await trim_log(log, before=before, retired=dropped)
    return LogRetired(head.id, len(dropped), trim)


async def _older_than(log: EventLog, entry_id: str) -> bool:
    """Whether some log stream's first entry comes before ``entry_id``."""
    for stream in log_streams(log.keys):
        first = await log.redis.xrange(stream, count=1)
        if first and id_lt(text(first[0][0]), entry_id):
            return True
    return False
