"""The projector: reads the log through a consumer group, folds each batch
into the views, writes them, then acks.

One batch: XREADGROUP over every partition's event stream and the node
stream; decode (an entry that does not decode is parked with its stream and
id, counted, and acked); load the views the batch touches; fold with
:func:`projections.replay.replay` (the same code ``replay verify`` trusts);
write what changed, the feed entries and the watermark in one script; XACK.
A crash between the write and the ack redelivers the batch, and the folds
skip what they already applied: nothing changes twice. A restarted projector
(a new consumer name) first takes over whatever its group left pending.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import socket
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from eventcore import groups
from eventcore.codec import Entry
from eventcore.errors import DecodeError
from eventcore.ids import stream_id_key
from eventcore.log import EventLog
from projections.replay import replay
from projections.store import ViewStore, current_views, group_for

__all__ = ["Projector", "tune_gc"]

log = logging.getLogger(__name__)


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
        elog: EventLog,
        store: ViewStore | None = None,
        *,
        group: str | None = None,
        consumer: str | None = None,
        batch: int = 1000,
        follow_pointer: bool = False,
        feed_after: ViewStore | None = None,
    ) -> None:
        self.log = elog
        self.store = store or ViewStore(elog)
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
        k = elog.keys
        self.streams = [k.events(p) for p in k.all_partitions()] + [k.nodes()]
        self.parked = 0
        self.applied = 0
        self._ready = False
        self._backlog = True  # first read this consumer's own pending entries

    async def _setup(self) -> None:
        for stream in self.streams:
            await groups.ensure_group(self.log.redis, stream, self.group, start_id="0")
            await self._adopt_pending(stream)
        self._ready = True

    async def _adopt_pending(self, stream: str) -> None:
        """Take over the entries earlier consumers of the group read and never
        acked. A projector killed after reading a batch leaves it pending under
        its own name, and a restarted one has a new name (``host-pid``): without
        this the batch, if it was never written, would be skipped for good. One
        projector runs per view namespace, so whatever is pending is ours; the
        backlog pass applies it before anything newer, keeping stream order."""
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
        if self.follow_pointer:
            ns = await current_views(self.log)
            if ns != self.store.ns:
                log.info("projector: views switched from %s to %s", self.store.ns, ns)
                self.store = ViewStore(self.log, ns, self.store.feed_maxlen)
                self.group = group_for(ns)
                self._ready = False
                self._backlog = True
        if not self._ready:
            await self._setup()
        start = "0" if self._backlog else ">"
        reply = await self.log.redis.xreadgroup(
            self.group,
            self.consumer,
            dict.fromkeys(self.streams, start),
            count=self.batch,
            block=None if self._backlog else block_ms,
        )
        raw = [(s.decode(), e) for s, entries in (reply or []) for e in entries]
        if self._backlog and not any(fields for _, (_, fields) in raw):
            self._backlog = False  # own pending entries done: now new ones
            if not raw:
                return await self.step(block_ms)
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
                log.error("parked %s", exc)
                await self.log.park(stream, entry_id, fields, exc.detail)
        if raw and self._backlog:
            # A redelivered batch may be older than what was written before the
            # crash (a smaller batch, or part of one): never move the watermark back.
            mark = await self.store.watermark()
            marks = {
                s: i
                for s, i in marks.items()
                if s not in mark or stream_id_key(i) > stream_id_key(mark[s])
            }
        if raw:
            task_ids = [e.event.task_id for e in entries if hasattr(e.event, "task_id")]
            before = await self.store.load(task_ids)
            after = replay(entries, start=before)
            await self.store.write(before, after, marks, feed=await self._announces(marks))
            await self._ack(acks)
            self.applied += len(entries)
        return len(raw)

    async def _announces(self, marks: dict[str, str]) -> bool:
        """Whether this batch's view changes go on the feed: always, unless
        the views in ``feed_after`` already include every entry of it."""
        if self.feed_after is None:
            return True
        seen = await self.feed_after.watermark()
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
                log.warning("projector: %s; retrying in 1s", exc)
                await asyncio.sleep(1)
