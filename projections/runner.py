"""The projector: reads the log through a consumer group, folds each batch
into the views, writes them, then acks.

A projector folds some view shards (all by default; see
:mod:`projections.store`): each shard takes its own streams. One batch:
XREADGROUP over the shards' streams; decode (an entry that does not decode
is parked with its stream and id, counted, and acked); per shard, load the
views the batch touches; fold with :func:`projections.replay.replay` (the
same code ``replay verify`` trusts); write what changed, the feed entries and
the watermark in one script (which checks the shard's lease when the
projector holds one: :mod:`projections.leases`); XACK.
A crash between the write and the ack redelivers the batch, and the folds
skip what they already applied: nothing changes twice. A restarted projector
(a new consumer name) first takes over whatever its group left pending.

A projector that follows the pointer (:func:`~projections.store.current_views`)
moves to the views a rebuild switched to, and their group, between two
batches. A rebuild destroys the old group right after the switch, possibly
while this projector is blocked reading it or about to: Redis then answers
NOGROUP, which here means "the views in use changed, look again", never a
reason to stop.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import socket
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from eventcore.codec import Entry
from eventcore.errors import DecodeError
from eventcore.ids import stream_id_key
from eventcore.log import EventLog, groups, spread
from projections.leases import ShardLease
from projections.replay import replay
from projections.store import ViewStore, current_views, drop_views, group_for, is_lost_group

__all__ = ["Projector", "tune_gc"]

logger = logging.getLogger(__name__)

# How often one step looks again after its group vanished before giving up:
# each look follows the pointer or recreates the group, so a second loss in a
# row means another rebuild switched meanwhile.
_LOST_GROUP_TRIES = 5


def tune_gc() -> None:
    """Garbage collection for a process that folds batches: what start-up
    made is frozen out of the collector's passes, and young collections wait
    for 50,000 new objects rather than 700, so a batch's short-lived views
    and events do not set off full passes over the process (about a tenth of
    a rebuild's CPU otherwise). Views hold no reference cycles."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


class Projector:
    """Applies the log to one view namespace. ``await step()`` does one batch;
    ``await run(stop)`` loops until ``stop`` is set."""

    def __init__(
        self,
        log: EventLog,
        store: ViewStore | None = None,
        *,
        group: str | None = None,
        consumer: str | None = None,
        batch: int = 1000,
        follow_pointer: bool = False,
        feed_after: ViewStore | None = None,
        shards: list[str] | None = None,
        lease: ShardLease | None = None,
    ) -> None:
        self.log = log
        self.store = store or ViewStore(log)
        self.group = group or group_for(self.store.ns)
        # With follow_pointer the projector moves to the view namespace a
        # rebuild switched to, and its consumer group, which the rebuild
        # already brought up to date.
        self.follow_pointer = follow_pointer
        # A rebuild passes the views in use: a batch they already include was
        # announced on the feed when they were written, so it adds no feed
        # entries (old states sent again would look like steps backwards).
        self.feed_after = feed_after
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.batch = batch
        k = log.keys
        # The shards this projector folds: every one, or the one it holds
        # ``lease`` on (written only while it holds it).
        self.lease = lease
        self.shards = [lease.shard] if lease is not None else (shards or k.view_shards())
        self._shard_of = {s: shard for shard in self.shards for s in k.shard_streams(shard)}
        self.streams = list(self._shard_of)
        self.parked = 0
        self.applied = 0
        self.switches = 0
        # The watermark of the views this projector writes, as it last wrote
        # it; after a switch, that of the views it left (see _announces).
        self._marks: dict[str, str] = {}
        self._announced: dict[str, str] = {}
        self._ready = False
        self._backlog = True  # first read this consumer's own pending entries

    async def _setup(self) -> None:
        """Make sure the group exists on every stream and take over what it
        left pending. A missing group starts right after the views' watermark
        (the start of the log for empty views): views whose group was lost
        carry on without applying anything twice or skipping anything. Views
        that hold nothing of a stream read it from its start, whatever their
        group read before."""
        self._marks = await self.store.watermark(self.shards)
        for stream in self.streams:
            start = self._marks.get(stream, "0")
            if await groups.ensure_group(self.log.redis, stream, self.group, start_id=start):
                logger.info("projector: group %s created on %s at %s", self.group, stream, start)
            elif stream not in self._marks:
                # Views with nothing of this stream, and a group that may have
                # read past its start (views dropped or lost, or kept under
                # another layout before): read it again from the start.
                await self.log.redis.xgroup_setid(stream, self.group, "0")
            await self._adopt_pending(stream)
        self._ready = True

    async def _adopt_pending(self, stream: str) -> None:
        """Take over the entries earlier consumers of the group read and never
        acked. A projector killed after reading a batch leaves it pending under
        its own name, and a restarted one has a new name (``host-pid``): without
        this the batch, if it was never written, would be skipped for good. One
        projector folds a shard at a time (the one holding its lease, or the
        only one), so whatever is pending on its streams is ours; the backlog
        pass applies it before anything newer, keeping stream order."""
        start = "0-0"
        while True:
            got = await groups.autoclaim(
                self.log.redis, stream, self.group, self.consumer, 0, start=start, count=1000
            )
            start = got.next_start
            if start == "0-0":
                return

    async def step(self, block_ms: int | None = None) -> int:
        """Apply one batch; returns how many entries it read (0: nothing new)."""
        for _ in range(_LOST_GROUP_TRIES):
            if self.follow_pointer:
                await self._follow()
            try:
                if not self._ready:
                    await self._setup()
                return await self._step(block_ms)
            except ResponseError as exc:
                if not is_lost_group(exc):
                    raise
                # A rebuild switched the views and dropped this group (or it
                # was lost some other way): look at the pointer again, and set
                # up the group of the views in use.
                logger.info("projector: group %s is gone (%s); looking again", self.group, exc)
                self._ready = False
                self._backlog = True
        raise ResponseError(f"NOGROUP {self.group} vanished {_LOST_GROUP_TRIES} times in a row")

    async def _follow(self) -> None:
        """Move to the view namespace in use if a rebuild switched it."""
        ns = await current_views(self.log)
        if ns == self.store.ns:
            return
        old = self.store.ns
        logger.info("projector: views switched from %s to %s", old, ns)
        # What this projector applied to the old views it announced then; the
        # new views may not have it yet, and applied there it is not announced
        # a second time.
        self._announced = self._marks
        # The rebuild dropped the old views when it switched, but a batch this
        # projector was writing then, or a group it recreated meanwhile, may
        # have landed after that. Nobody writes the old views once their
        # projector has left them, so this drop is the last.
        await drop_views(self.log, old)
        if self.lease is not None:
            await self.lease.move(ns)  # LeaseLost if another projector has it there
        self.store = ViewStore(self.log, ns, self.store.feed_maxlen)
        self.group = group_for(ns)
        self.switches += 1
        self._ready = False
        self._backlog = True

    async def _step(self, block_ms: int | None) -> int:
        start = "0" if self._backlog else ">"
        reply = await spread.xreadgroup(
            self.log.redis,
            self.group,
            self.consumer,
            dict.fromkeys(self.streams, start),
            count=self.batch,
            block=None if self._backlog else block_ms,
        )
        raw = [(s.decode(), e) for s, entries in reply for e in entries]
        if self._backlog and not any(fields for _, (_, fields) in raw):
            self._backlog = False  # own pending entries done: now new ones
            if not raw:
                return await self._step(block_ms)
        entries: list[Entry[Any]] = []
        acks: dict[str, list[str]] = {}
        marks: dict[str, str] = {}
        codecs = {s: self.log.codec_of(s) for s in self.streams}
        for stream, (eid, fields) in raw:
            entry_id = eid.decode()
            acks.setdefault(stream, []).append(entry_id)
            marks[stream] = entry_id
            if not fields:  # deleted (trimmed) while pending: nothing to apply
                continue
            try:
                entries.append(codecs[stream].decode_fields(stream, entry_id, fields))
            except DecodeError as exc:
                self.parked += 1
                logger.error("parked %s", exc)
                await self.log.park(stream, entry_id, fields, exc.detail)
        if raw and self._backlog:
            # A redelivered batch may be older than what was written before the
            # crash (a smaller batch, or part of one): never move the watermark back.
            mark = await self.store.watermark(self.shards)
            marks = {
                s: i
                for s, i in marks.items()
                if s not in mark or stream_id_key(i) > stream_id_key(mark[s])
            }
        if raw:
            await self._write(entries, marks)
            self._marks = {**self._marks, **marks}
            await self._ack(acks)
            self.applied += len(entries)
        return len(raw)

    async def _write(self, entries: list[Entry[Any]], marks: dict[str, str]) -> None:
        """Fold and write the batch shard by shard: each shard's views, feed
        entries and watermark in one script call."""
        seen = await self._announced_marks()  # once per batch, not per shard
        by_shard: dict[str, list[Entry[Any]]] = {}
        for entry in entries:
            by_shard.setdefault(self._shard_of[entry.stream], []).append(entry)
        for shard in self.shards:
            store = self.store.shard(shard)
            mine = by_shard.get(shard, [])
            shard_marks = {s: i for s, i in marks.items() if s in store.streams}
            if not mine and not shard_marks:
                continue
            task_ids = [e.event.task_id for e in mine if hasattr(e.event, "task_id")]
            before = await store.load(task_ids)
            after = replay(mine, start=before)
            await store.write(
                before,
                after,
                shard_marks,
                feed=self._announces(shard_marks, seen),
                lease=self.lease.token if self.lease is not None else "",
            )

    async def _announced_marks(self) -> dict[str, str]:
        """How far the views already announced on the feed reach: the views
        in ``feed_after`` and the views this projector left at a switch."""
        seen = self._announced
        if self.feed_after is not None:
            seen = {**seen, **await self.feed_after.watermark()}
        return seen

    @staticmethod
    def _announces(marks: dict[str, str], seen: dict[str, str]) -> bool:
        """Whether a shard's batch goes on the feed: unless ``seen`` already
        includes every entry of it."""
        if not seen:
            return True
        return any(
            s not in seen or stream_id_key(i) > stream_id_key(seen[s]) for s, i in marks.items()
        )

    async def _ack(self, acks: dict[str, list[str]]) -> None:
        async with self.log.redis.pipeline(transaction=False) as pipe:
            for stream, ids in acks.items():
                pipe.xack(stream, self.group, *ids)
            await pipe.execute()

    async def run(self, stop: asyncio.Event, block_ms: int = 1000) -> None:
        """Apply batches until ``stop`` is set; Redis errors are logged and retried."""
        while not stop.is_set():
            try:
                await self.step(block_ms)
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                logger.warning("projector: %s; retrying in 1s", exc)
                await asyncio.sleep(1)
            except ResponseError as exc:
                if not is_lost_group(exc):
                    raise
                logger.warning("projector: %s; retrying in 1s", exc)
                await asyncio.sleep(1)
