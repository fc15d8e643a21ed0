"""Views in Redis: where they live, how a batch of changes is written, and
how they are read back.

The views are kept in shards (:meth:`eventcore.keys.Keys.view_shards`): one
per partition, holding the views of its tasks and its parts of the queue,
stats and node views, and the node shard, holding the node views as the node
stream tells them. Under one view namespace (``live`` by default; a rebuild
writes another and switches), each shard has:

- ``task:<id>``: one key per task view (MessagePack);
- ``nodes``, ``queues``, ``stats``: hashes of node, queue and stats views
  (stats fields: ``*`` for the global view, ``<queue>\\x1f<kind>`` per scope);
- ``watermark``: stream -> last entry id applied (its own streams only);
- ``idx:all``, ``idx:<field>:<value>`` (status, queue, kind, node, tenant):
  sorted sets of its task ids by submission time, for listing;
- ``lease``: the projector folding it now.

Every key of a shard carries the shard's hash tag (``{v0}``, ``{vn}``), so
one script writes a batch of its changes, their feed entries (the shard's
feed) and its watermark together, and checks the lease in the same call.

:class:`ShardStore` is one shard; :class:`ViewStore` reads all of them as
the views of the whole log (:mod:`projections.merge`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec
from redis.exceptions import ResponseError

from eventcore.codec import text
from eventcore.errors import EventcoreError
from eventcore.keys import NODE_SHARD
from eventcore.log import EventLog
from projections.merge import merge_views
from projections.replay import Views
from projections.scripts import FeedEntry, IndexOp, ViewScripts
from projections.views import NodeView, QueueView, StatsView, TaskView

__all__ = [
    "DEFAULT_VIEWS",
    "GLOBAL",
    "LeaseLost",
    "ShardStore",
    "ViewStore",
    "current_views",
    "drop_views",
    "group_for",
    "is_lost_group",
]

GLOBAL = "*"
DEFAULT_VIEWS = "live"


async def current_views(log: EventLog) -> str:
    """The view namespace in use: ``live`` until a rebuild switches it."""
    value = await log.redis.get(log.keys.view_pointer())
    return DEFAULT_VIEWS if value is None else value.decode()


def group_for(view_ns: str) -> str:
    """The projector's consumer group for a view namespace."""
    return "projector" if view_ns == DEFAULT_VIEWS else f"projector:{view_ns}"


def is_lost_group(exc: ResponseError) -> bool:
    """Whether a Redis error says the consumer group read from is gone
    (destroyed, or its stream deleted), before or while the read blocked."""
    return str(exc).startswith(("NOGROUP", "UNBLOCKED"))


async def drop_views(log: EventLog, view_ns: str) -> int:
    """Delete a view namespace's keys and its projector group; returns keys deleted."""
    deleted = 0
    batch: list[bytes] = []
    for shard in log.keys.view_shards():
        async for key in scan(log.redis, log.keys.view(shard, view_ns, "*")):
            batch.append(key)
            if len(batch) >= 1000:
                deleted += await _unlink(log, batch)
                batch = []
    if batch:
        deleted += await _unlink(log, batch)
    group = group_for(view_ns)
    for stream in [*(log.keys.events(p) for p in log.keys.all_partitions()), log.keys.nodes()]:
        with contextlib.suppress(ResponseError):  # no such group or stream: nothing to drop
            await log.redis.xgroup_destroy(stream, group)
    return deleted


def scan(redis: Any, pattern: str) -> Any:
    """The keys matching ``pattern`` (every master's, on a cluster)."""
    return redis.scan_iter(match=pattern, count=1000)


async def _unlink(log: EventLog, keys: list[bytes]) -> int:
    """Unlink keys of any slots: one UNLINK per key on a pipeline (a cluster
    refuses one over several slots)."""
    async with log.redis.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.execute_command("UNLINK", key)  # a cluster pipeline has no plain unlink
        return sum(await pipe.execute())


SEP = "\x1f"
FEED_MAXLEN = 100_000

_enc = msgspec.msgpack.Encoder()
_task = msgspec.msgpack.Decoder(TaskView)
_node = msgspec.msgpack.Decoder(NodeView)
_queue = msgspec.msgpack.Decoder(QueueView)
_stats = msgspec.msgpack.Decoder(StatsView)


class LeaseLost(EventcoreError):
    """A batch was not written: the shard's lease names another projector
    (this one's lapsed and was taken over)."""


class ShardStore:
    """The views of one shard of one view namespace."""

    def __init__(
        self,
        log: EventLog,
        view_ns: str,
        shard: str,
        feed_maxlen: int = FEED_MAXLEN,
        scripts: ViewScripts | None = None,
    ):
        self.log = log
        self.scripts = scripts or ViewScripts(log.redis)
        self.ns = view_ns
        self.shard = shard
        self.feed_maxlen = feed_maxlen
        k = log.keys
        self.streams = k.shard_streams(shard)
        self.nodes_key = k.view(shard, view_ns, "nodes")
        self.queues_key = k.view(shard, view_ns, "queues")
        self.stats_key = k.view(shard, view_ns, "stats")
        self.watermark_key = k.view(shard, view_ns, "watermark")
        self.lease_key = k.view_lease(shard, view_ns)
        self.feed_key = k.feed(shard)
        self._index_keys: dict[tuple[str, str], str] = {}

    def task_key(self, task_id: str) -> str:
        return self.log.keys.view(self.shard, self.ns, "task", task_id)

    def index_key(self, field: str, value: str = "") -> str:
        """The sorted set (score: submission time, ms) of tasks with ``field`` = ``value``."""
        key = self._index_keys.get((field, value))
        if key is None:
            key = (
                self.log.keys.view(self.shard, self.ns, "idx", field, value)
                if field != "all"
                else self.log.keys.view(self.shard, self.ns, "idx", "all")
            )
            if len(self._index_keys) < 10_000:  # statuses, queues, kinds, nodes, tenants
                self._index_keys[field, value] = key
        return key

    def index_keys(self, view: TaskView | None) -> set[str]:
        """Every index a task view belongs to: all, and its status, queue, kind,
        node and tenant."""
        if view is None or view.status is None:
            return set()
        keys = {self.index_key("all"), self.index_key("status", view.status.value)}
        for field in ("queue", "kind", "node", "tenant"):
            value = getattr(view, field)
            if value:
                keys.add(self.index_key(field, value))
        return keys

    # -- reading -------------------------------------------------------------------

    async def load(self, task_ids: Iterable[str]) -> Views:
        """The shard's views a batch can touch: the given tasks (of this
        shard), every node, queue and stats view part (there are few of
        those), in one round trip."""
        ids = list(dict.fromkeys(task_ids))
        async with self.log.redis.pipeline(transaction=False) as pipe:
            self.queue_load(pipe, ids)
            return self.decode_load(ids, await pipe.execute())

    async def read_at(self, task_ids: Iterable[str]) -> tuple[dict[str, str], Views]:
        """The watermark and the views :meth:`load` reads, in one transaction:
        the views are exactly the fold of the log up to that watermark, however
        busy the projector writing them (every batch is one script, so a
        transaction sees all of one or none of it). Tasks without a view are
        left out."""
        ids = list(dict.fromkeys(task_ids))
        async with self.log.redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(self.watermark_key)
            self.queue_load(pipe, ids)
            replies = await pipe.execute()
        marks = {text(k): text(v) for k, v in replies.pop(0).items()}
        return marks, self.decode_load(ids, replies)

    def queue_load(self, pipe: Any, ids: list[str]) -> None:
        """Queue on ``pipe`` the reads :meth:`load` makes (see :meth:`decode_load`)."""
        if ids:
            # As a plain command: redis-py refuses pipe.mget on a cluster
            # pipeline, though every key of a shard shares its slot.
            pipe.execute_command("MGET", *[self.task_key(t) for t in ids])
        pipe.hgetall(self.nodes_key)
        pipe.hgetall(self.queues_key)
        pipe.hgetall(self.stats_key)

    def decode_load(self, ids: list[str], replies: list[Any]) -> Views:
        """The views from the replies to what :meth:`queue_load` queued (it
        takes them off the front of ``replies``)."""
        raw_tasks = replies.pop(0) if ids else []
        nodes, queues, stats = replies[:3]
        del replies[:3]
        stats_all = {text(k): _stats.decode(v) for k, v in stats.items()}
        return Views(
            tasks={t: _task.decode(v) for t, v in zip(ids, raw_tasks) if v is not None},
            nodes={text(k): _node.decode(v) for k, v in nodes.items()},
            queues={text(k): _queue.decode(v) for k, v in queues.items()},
            stats=stats_all.pop(GLOBAL, StatsView()),
            stats_by={tuple(k.split(SEP, 1)): v for k, v in stats_all.items()},  # type: ignore[misc]
        )

    async def task_ids(self) -> list[str]:
        """The id of every stored task view (a scan: the set may change meanwhile)."""
        return [
            k.decode().rsplit(":", 1)[1] async for k in scan(self.log.redis, self.task_key("*"))
        ]

    async def watermark(self) -> dict[str, str]:
        """The last entry id applied, per stream (read-your-writes waits on this)."""
        raw = await self.log.redis.hgetall(self.watermark_key)
        return {text(k): text(v) for k, v in raw.items()}

    # -- writing -------------------------------------------------------------------

    async def write(
        self,
        before: Views,
        after: Views,
        marks: Mapping[str, str],
        *,
        feed: bool = True,
        lease: str = "",
    ) -> int:
        """Write what changed from ``before`` to ``after``, a feed entry per
        changed view, and the new watermark, in one script call. Returns the
        number of views written.

        ``feed=False`` writes no feed entries: a rebuild seeding fresh views
        from a snapshot changes nothing a feed reader has not seen already.
        ``lease``: the token this writer holds the shard's lease with; the
        script writes nothing, and :class:`LeaseLost` is raised, when the
        lease names another. ``""``: no lease (a rebuild writing views no one
        else writes yet)."""
        tasks = [(t, v) for t, v in after.tasks.items() if before.tasks.get(t) != v]
        nodes = [(n, v) for n, v in after.nodes.items() if before.nodes.get(n) != v]
        queues = [(q, v) for q, v in after.queues.items() if before.queues.get(q) != v]
        stats: list[tuple[str, StatsView]] = []
        if after.stats != before.stats:
            stats.append((GLOBAL, after.stats))
        stats += [
            (SEP.join(scope), v)
            for scope, v in after.stats_by.items()
            if before.stats_by.get(scope) != v
        ]
        encoded: dict[int, bytes] = {}

        def enc(v: Any) -> bytes:
            data = encoded.get(id(v))
            if data is None:
                data = encoded[id(v)] = _enc.encode(v)
            return data

        changes: list[FeedEntry] = []
        for t, v in tasks:
            status = v.status.value if v.status is not None else ""
            changes.append(
                FeedEntry("task", t, v.queue, v.kind, status, v.node or "", v.tenant, enc(v))
            )
        for n, v in nodes:
            changes.append(FeedEntry("node", n, "", "", v.state, n, "", enc(v)))
        for q, v in queues:
            changes.append(FeedEntry("queue", q, q, "", "", "", "", enc(v)))
        for name, v in stats:
            queue, _, kind = name.partition(SEP)
            scope_queue = "" if name == GLOBAL else queue
            changes.append(FeedEntry("stats", name, scope_queue, kind, "", "", "", enc(v)))
        ops: list[IndexOp] = []
        for t, v in tasks:
            old = self.index_keys(before.tasks.get(t))
            new = self.index_keys(v)
            score = int((v.submitted_at or 0) * 1000)
            ops += [IndexOp(False, key, 0, t) for key in old - new]
            ops += [IndexOp(True, key, score, t) for key in new - old]
        try:
            await self._write(
                changes if feed else [], tasks, nodes, queues, stats, marks, ops, enc, lease
            )
        except ResponseError as exc:
            if "LEASE" in str(exc):
                raise LeaseLost(f"views {self.ns!r} shard {self.shard}: {exc}") from None
            raise
        return len(changes)

    async def _write(
        self,
        changes: list[FeedEntry],
        tasks: Any,
        nodes: Any,
        queues: Any,
        stats: Any,
        marks: Mapping[str, str],
        ops: list[IndexOp],
        enc: Any,
        lease: str,
    ) -> None:
        await self.scripts.write_views(
            feed=self.feed_key,
            lease_key=self.lease_key,
            lease=lease,
            watermark=self.watermark_key,
            nodes=self.nodes_key,
            queues=self.queues_key,
            stats=self.stats_key,
            feed_maxlen=self.feed_maxlen,
            tasks=[(self.task_key(t), enc(v)) for t, v in tasks],
            node_views=[(n, enc(v)) for n, v in nodes],
            queue_views=[(q, enc(v)) for q, v in queues],
            stat_views=[(name, enc(v)) for name, v in stats],
            feed_entries=changes,
            marks=marks,
            index_ops=ops,
        )


class ViewStore:
    """The views of one view namespace, every shard of it: reads give the
    views of the whole log (the shards' parts merged); a projector writes
    through :meth:`shard`."""

    def __init__(self, log: EventLog, view_ns: str = DEFAULT_VIEWS, feed_maxlen: int = FEED_MAXLEN):
        self.log = log
        self.ns = view_ns
        self.feed_maxlen = feed_maxlen
        scripts = ViewScripts(log.redis)
        self.shards = {
            s: ShardStore(log, view_ns, s, feed_maxlen, scripts) for s in log.keys.view_shards()
        }

    def shard(self, shard: str) -> ShardStore:
        return self.shards[shard]

    def shard_of(self, task_id: str) -> ShardStore:
        """The shard holding ``task_id``'s view."""
        return self.shards[self.log.keys.shard_of_task(task_id)]

    def task_key(self, task_id: str) -> str:
        return self.shard_of(task_id).task_key(task_id)

    async def load(self, task_ids: Iterable[str]) -> Views:
        """The given tasks' views and every node, queue and stats view (each
        merged from its parts), in one round trip."""
        by_shard: dict[str, list[str]] = {s: [] for s in self.shards}
        for t in dict.fromkeys(task_ids):
            by_shard[self.log.keys.shard_of_task(t)].append(t)
        async with self.log.redis.pipeline(transaction=False) as pipe:
            for name, shard in self.shards.items():
                shard.queue_load(pipe, by_shard[name])
            replies = await pipe.execute()
        parts = {
            name: shard.decode_load(by_shard[name], replies) for name, shard in self.shards.items()
        }
        told = parts.pop(NODE_SHARD)
        return merge_views(told, list(parts.values()))

    async def task(self, task_id: str) -> TaskView | None:
        raw = await self.log.redis.get(self.task_key(task_id))
        return None if raw is None else _task.decode(raw)

    async def tasks(self, task_ids: Iterable[str]) -> dict[str, TaskView]:
        """The views of the given tasks that exist (one MGET per shard, in one
        round trip): what a task list reads, without the other views."""
        by_shard: dict[str, list[str]] = {}
        for t in dict.fromkeys(task_ids):
            by_shard.setdefault(self.log.keys.shard_of_task(t), []).append(t)
        if not by_shard:
            return {}
        async with self.log.redis.pipeline(transaction=False) as pipe:
            for name, ids in by_shard.items():
                shard = self.shards[name]
                pipe.execute_command("MGET", *[shard.task_key(t) for t in ids])
            replies = await pipe.execute()
        return {
            t: _task.decode(raw)
            for ids, values in zip(by_shard.values(), replies)
            for t, raw in zip(ids, values)
            if raw is not None
        }

    async def task_ids(self) -> list[str]:
        """The id of every stored task view (a scan: the set may change meanwhile)."""
        out: list[str] = []
        for shard in self.shards.values():
            out += await shard.task_ids()
        return out

    async def nodes(self) -> dict[str, NodeView]:
        return (await self.load(())).nodes

    async def queues(self) -> dict[str, QueueView]:
        return (await self.load(())).queues

    async def stats(self) -> tuple[StatsView, dict[tuple[str, str], StatsView]]:
        views = await self.load(())
        return views.stats, views.stats_by

    async def watermark(self, shards: Iterable[str] | None = None) -> dict[str, str]:
        """The last entry id applied, per stream, over every shard (or the
        ones named): read-your-writes waits on this."""
        names = list(self.shards) if shards is None else list(shards)
        async with self.log.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(self.shards[name].watermark_key)
            replies = await pipe.execute()
        return {text(k): text(v) for raw in replies for k, v in raw.items()}

    async def mark_of(self, stream: str) -> str | None:
        """The last entry id of ``stream`` the views include (None: none)."""
        shard = self.shards[self.log.keys.shard_of_stream(stream)]
        raw = await self.log.redis.hget(shard.watermark_key, stream)
        return None if raw is None else text(raw)
