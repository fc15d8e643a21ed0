"""The read API the web app uses: one task, filtered task lists with cursor
pagination, nodes, queues, stats, and waiting until the views have caught up
with an entry a caller wrote (read-your-writes)."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence

import msgspec

from eventcore.ids import stream_id_key
from eventcore.keys import NODE_SHARD
from eventcore.log import EventLog
from eventcore.nodes import read_queue_consumers
from eventcore.routing import backlog
from projections.store import ShardStore, ViewStore
from projections.views import TaskView

__all__ = [
    "QueueHealth",
    "TaskFilter",
    "TaskPage",
    "caught_up",
    "list_tasks",
    "queue_health",
    "read_queue_health",
    "wait_for",
]

# Filters in the order an index is chosen: the most selective first.
INDEXED = ("status", "node", "queue", "kind", "tenant")


class TaskFilter(msgspec.Struct, frozen=True, kw_only=True):
    status: str | None = None
    queue: str | None = None
    kind: str | None = None
    node: str | None = None
    tenant: str | None = None
    since: float | None = None  # submitted at or after (seconds since the epoch)
    until: float | None = None  # submitted before

    def matches(self, view: TaskView) -> bool:
        for field in INDEXED:
            want = getattr(self, field)
            if want is not None:
                have = getattr(view, field)
                have = have.value if hasattr(have, "value") else have
                if have != want:
                    return False
        return True


class TaskPage(msgspec.Struct, frozen=True):
    tasks: list[TaskView]
    next_cursor: str | None  # pass back for the next page; None: no more


def _cursor(score: float, task_id: str) -> str:
    return f"{int(score)}:{task_id}"


class _Index:
    """One shard's index of a filter, read newest first a chunk at a time."""

    def __init__(self, store: ShardStore, key: str) -> None:
        self.store = store
        self.key = key
        self.rows: deque[tuple[int, str]] = deque()
        self.offset = 0
        self.done = False

    async def fill(self, high: float | str, low: float | str, chunk: int) -> None:
        rows = await self.store.log.redis.zrevrangebyscore(
            self.key, high, low, start=self.offset, num=chunk, withscores=True
        )
        self.offset += len(rows)
        self.done = len(rows) < chunk
        self.rows.extend((int(score), member.decode()) for member, score in rows)


async def list_tasks(
    store: ViewStore, flt: TaskFilter, *, limit: int = 50, cursor: str | None = None
) -> TaskPage:
    """Tasks matching ``flt``, newest first, ``limit`` at most per page.

    Reads the index of the most selective filter given in every shard,
    merged newest first (submission time, then task id, both descending),
    and checks the other filters on the views; a page scans at most
    ``20 * limit`` index entries, so a rare combination returns a short page
    with a cursor rather than a slow one. The cursor is the last entry's
    (time, id): stable whatever the number of shards.
    """
    limit = max(1, min(limit, 500))
    field = next((f for f in INDEXED if getattr(flt, f) is not None), "all")
    value = getattr(flt, field) or "" if field != "all" else ""
    shards = [s for n, s in store.shards.items() if n != NODE_SHARD]
    indexes = [_Index(s, s.index_key(field, value)) for s in shards]
    high: float | str = "+inf" if flt.until is None else f"({int(flt.until * 1000)}"
    low: float | str = "-inf" if flt.since is None else int(flt.since * 1000)
    after: tuple[int, str] | None = None
    if cursor:
        score_text, _, after_id = cursor.partition(":")
        try:
            after = (int(score_text), after_id)
        except ValueError:
            raise ValueError(f"cursor {cursor!r} is not one this API gave out") from None
        high = after[0]
    out: list[TaskView] = []
    scanned, chunk = 0, max(limit * 2, 50)
    last: tuple[int, str] | None = None
    while len(out) < limit and scanned < 20 * limit:
        picked: list[tuple[int, str]] = []
        while len(picked) < chunk:
            for index in indexes:
                if not index.rows and not index.done:
                    await index.fill(high, low, chunk)
            ready = [index for index in indexes if index.rows]
            if not ready:
                break
            top = max(ready, key=lambda index: index.rows[0])
            row = top.rows.popleft()
            scanned += 1
            if after and row[0] == after[0] and row[1] >= after[1]:
                continue  # on or before the cursor (same millisecond, larger id)
            picked.append(row)
        if not picked:
            return TaskPage(out, None)
        views = await store.tasks(t for _, t in picked)
        for row in picked:
            last = row
            view = views.get(row[1])
            if view is not None and flt.matches(view):
                out.append(view)
                if len(out) == limit:
                    break
        if len(picked) < chunk and len(out) < limit:
            return TaskPage(out, None)
    return TaskPage(out, _cursor(*last) if last else None)


async def caught_up(store: ViewStore, stream: str, entry_id: str) -> bool:
    """Whether the views include entry ``entry_id`` of ``stream`` (asks the
    one shard that folds ``stream``)."""
    mark = await store.mark_of(stream)
    if mark is None:
        return False
    return stream_id_key(mark) >= stream_id_key(entry_id)


async def wait_for(store: ViewStore, stream: str, entry_id: str, *, timeout: float = 2.0) -> bool:
    """Wait (polling the watermark) until the views include the entry; False
    if ``timeout`` runs out first."""
    deadline = time.monotonic() + timeout
    while not await caught_up(store, stream, entry_id):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.01)
    return True


# -- queue health ----------------------------------------------------------------------


class QueueHealth(msgspec.Struct, frozen=True, kw_only=True):
    """Whether anyone reads a queue: ``consumers`` live nodes read it;
    ``stranded`` work entries sit in it with none to read them (0 when
    served); ``warning`` says so in words, or is ``None``."""

    queue: str
    consumers: int
    served: bool
    stranded: int
    warning: str | None = None


def queue_health(
    names: Sequence[str], entries: Mapping[str, int], consumers: Mapping[str, int]
) -> dict[str, QueueHealth]:
    """The health of each queue in ``names`` from the entries in its work
    streams (:func:`eventcore.routing.backlog`) and its live consumers
    (:func:`eventcore.nodes.queue_consumers`). Pure: the queue list, the
    metrics, ``eventcore status`` and the dashboard all show this.

    With no live consumer, every entry is stranded: a waiting one has nobody
    to take it, and a claimed one was claimed by a node that is gone and that
    only a reader of this queue would reclaim."""
    out = {}
    for name in names:
        n = consumers.get(name, 0)
        stranded = entries.get(name, 0) if n == 0 else 0
        warning = (
            f"no worker serves this queue: {stranded} task(s) wait and no live node reads it"
            if stranded
            else None
        )
        out[name] = QueueHealth(
            queue=name, consumers=n, served=n > 0, stranded=stranded, warning=warning
        )
    return out


async def read_queue_health(
    log: EventLog, declared: Sequence[str], others: Iterable[str] = (), *, silent_for: float
) -> dict[str, QueueHealth]:
    """:func:`queue_health` of the declared queues and then ``others`` (queues
    that have a view but are no longer declared), read now from the node
    records and the work streams (two round trips)."""
    names = [*declared, *sorted(set(others) - set(declared))]
    consumers = await read_queue_consumers(log, names, silent_for=silent_for)
    return queue_health(names, await backlog(log, names), consumers)
