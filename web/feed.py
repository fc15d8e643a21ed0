"""The live feed: one reader per web process follows the feeds of every
view shard (one stream each, read per slot on a cluster) and fans each view
change out to the SSE clients whose filters match. Every SSE id is the
position over all the shards' feeds after that change (:mod:`web.position`).

Every client has a bounded queue. A client that falls ``buffer`` messages
behind is cut off with a ``resync`` event rather than letting its queue grow:
it reconnects with ``Last-Event-ID`` and reads what it missed from the
stream itself. A client resuming with ``Last-Event-ID`` is registered first
and then reads the stream from that id, and only then drains its queue,
skipping what it already sent, so nothing falls between history and live.

The reader also tells whether Redis is there (:meth:`FeedHub.wait_live`): a
new client is checked against it rather than with a command of its own, so a
thousand browsers reconnecting at once cost Redis nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Collection, Mapping
from typing import Any

import msgspec
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from eventcore.codec import text
from eventcore.ids import stream_id_key
from eventcore.log import EventLog, spread
from projections.store import FEED_MAXLEN
from web.feedparts import MERGED, FeedParts
from web.position import Mark, PositionError, decode_position, encode_position, mark_text

__all__ = ["FILTERS", "FeedFilter", "FeedHub", "FeedItem", "Resync", "Revoked"]

logger = logging.getLogger("eventcore.web.feed")

_any = msgspec.msgpack.Decoder()
_json = msgspec.json.Encoder()


class FeedItem(msgspec.Struct, frozen=True):
    """One view change as a shard's feed holds it: the fields filters match
    on, where it is (``shard`` index, its entry id ``mark``, and the position
    ``marks`` over every shard after it), and the SSE message (the view as
    JSON) ready to send."""

    shard: int
    mark: Mark
    marks: tuple[Mark, ...]
    entity: str
    key: str
    queue: str
    kind: str
    status: str
    node: str
    tenant: str
    data: str
    frame: bytes  # the whole SSE message, encoded once for every client

    @classmethod
    def from_entry(
        cls,
        shard: int,
        entry_id: str,
        marks: tuple[Mark, ...],
        fields: Mapping[bytes, bytes],
        parts: FeedParts | None = None,
        *,
        live: bool = True,
    ) -> FeedItem:
        """The item of one feed entry; with ``parts``, a queue, stats or node
        view is sent whole (merged with the other shards' latest parts;
        ``live``: this entry is the newest of its shard)."""

        def f(name: bytes) -> str:
            return fields.get(name, b"").decode()

        entity = f(b"entity")
        raw = fields.get(b"view")
        if raw is None:
            view = None
        elif parts is not None and entity in MERGED:
            view = parts.merged(entity, f(b"id"), shard, raw, keep=live)
        else:
            view = _any.decode(raw)
        data = _json.encode(
            {"entity": entity, "id": f(b"id"), "status": f(b"status") or None, "view": view}
        ).decode()
        return cls(
            shard,
            stream_id_key(entry_id),
            marks,
            entity,
            f(b"id"),
            f(b"queue"),
            f(b"kind"),
            f(b"status"),
            f(b"node"),
            f(b"tenant"),
            data,
            _frame(marks, entity, data),
        )

    def at(self, marks: tuple[Mark, ...]) -> FeedItem:
        """This change with the position ``marks`` as its SSE id."""
        if marks == self.marks:
            return self
        return msgspec.structs.replace(
            self, marks=marks, frame=_frame(marks, self.entity, self.data)
        )


def _frame(marks: tuple[Mark, ...], entity: str, data: str) -> bytes:
    return f"id: {encode_position(marks)}\nevent: {entity}\ndata: {data}\n\n".encode()


class FeedFilter(msgspec.Struct, frozen=True, kw_only=True):
    """What a client wants. ``tenant`` not None (a tenant-bound token) limits
    the feed to that tenant's task views: node, queue and stats views mix
    tenants and are left out."""

    task: str | None = None
    queue: str | None = None
    kind: str | None = None
    status: str | None = None
    node: str | None = None
    entity: str | None = None
    tenant: str | None = None

    def matches(self, item: FeedItem) -> bool:
        if self.tenant is not None and (item.entity != "task" or item.tenant != self.tenant):
            return False
        if self.task is not None and (item.entity != "task" or item.key != self.task):
            return False
        return (
            (self.entity is None or item.entity == self.entity)
            and (self.queue is None or item.queue == self.queue)
            and (self.kind is None or item.kind == self.kind)
            and (self.status is None or item.status == self.status)
            and (self.node is None or item.node == self.node)
        )


# The filters a client sets in the query string (the tenant comes from its token).
FILTERS = tuple(f for f in FeedFilter.__struct_fields__ if f != "tenant")


class Resync(Exception):
    """The client fell too far behind (or asked for entries the capped feed
    no longer holds) and must re-read the views."""


class Revoked(Exception):
    """The token a client streams with was revoked: its stream ends."""


class _Client:
    def __init__(self, flt: FeedFilter, buffer: int, token: str) -> None:
        self.filter = flt
        # None in the queue only wakes the client (see FeedHub.revoke).
        self.queue: asyncio.Queue[FeedItem | None] = asyncio.Queue(buffer)
        self.catching_up = False
        self.overflowed = False
        self.token = token
        self.revoked = False


class FeedHub:
    """The one feed reader of a web process and the clients it feeds.

    ``stale_after``: how long past a blocking read's ``block_ms`` the reader
    may go without a successful read before Redis counts as away.
    """

    def __init__(
        self,
        log: EventLog,
        *,
        buffer: int = 256,
        block_ms: int = 250,
        stale_after: float = 2.0,
    ) -> None:
        self.log = log
        self.shards = log.keys.view_shards()
        self.keys = [log.keys.feed(shard) for shard in self.shards]
        self._index = {key: i for i, key in enumerate(self.keys)}
        self.parts = FeedParts(log)
        self.buffer = buffer
        self.block_ms = block_ms
        self.clients: set[_Client] = set()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.marks: list[Mark] | None = None  # how far the reader has read each feed
        self.ready = asyncio.Event()
        self.stale_after = stale_after
        self._read_at: float | None = None  # when a read last succeeded; None: failing
        self._read = asyncio.Event()  # set (and replaced) at each successful read

    async def start(self) -> None:
        self._closing = False
        self._task = asyncio.create_task(self._read_loop(), name="feed-reader")

    async def stop(self) -> None:
        # Let the blocking read return rather than cancel it: a read cancelled
        # half-way leaves its connection in an unknown state.
        self._closing = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._task, self.block_ms / 1000 + 2)
            self._task = None

    async def _read_loop(self) -> None:
        backoff = 0.1
        while not self._closing:
            try:
                if self.marks is None:
                    self.marks = await self._ends()
                    self.ready.set()
                    self._heard()  # clients need not wait for the first blocking read
                positions = {k: mark_text(m) for k, m in zip(self.keys, self.marks)}
                reply = await spread.xread(
                    self.log.redis, positions, count=1000, block=self.block_ms
                )
                backoff = 0.1
                self._heard()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away: keep clients, try again
                self._read_at = None
                logger.warning("feed reader: %s; retrying in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            for key, entries in reply or ():
                i = self._index[text(key)]
                for raw_id, fields in entries:
                    await self._know(fields)
                    entry_id = raw_id.decode()
                    self.marks[i] = stream_id_key(entry_id)
                    if self.clients:
                        self.publish(i, entry_id, fields)
                    elif b"view" in fields and fields.get(b"entity", b"").decode() in MERGED:
                        self.parts.note(
                            fields[b"entity"].decode(), fields[b"id"].decode(), i, fields[b"view"]
                        )

    async def _know(self, fields: Mapping[bytes, bytes]) -> None:
        """Have every shard's part of the view an entry names (read once).
        Redis failing here is not the reader's end: the view goes out merged
        from the parts known, and the next read tries again."""
        entity = fields.get(b"entity", b"").decode()
        if entity in MERGED:
            key = fields.get(b"id", b"").decode()
            if not self.parts.known(entity, key):
                try:
                    await self.parts.load(entity, key)
                except Exception as exc:  # Redis away a moment: keep feeding
                    logger.warning("feed reader: parts of %s %s: %s", entity, key, exc)

    async def _ends(self) -> list[Mark]:
        """The newest entry of every shard's feed."""
        async with self.log.redis.pipeline(transaction=False) as pipe:
            for key in self.keys:
                pipe.xrevrange(key, count=1)
            newest = await pipe.execute()
        return [stream_id_key(n[0][0].decode()) if n else (0, 0) for n in newest]

    def position(self) -> str | None:
        """The reader's position, as an SSE id (None before its first read)."""
        return None if self.marks is None else encode_position(tuple(self.marks))

    def _heard(self) -> None:
        self._read_at = time.monotonic()
        read, self._read = self._read, asyncio.Event()
        read.set()

    def live(self) -> bool:
        """Whether the reader's last read succeeded, and recently enough."""
        at = self._read_at
        return at is not None and time.monotonic() - at < self.block_ms / 1000 + self.stale_after

    async def wait_live(self, timeout: float) -> bool:
        """True at once if :meth:`live`, else once the next read succeeds;
        False if none does within ``timeout`` seconds (Redis is away)."""
        if self.live():
            return True
        try:
            await asyncio.wait_for(self._read.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def publish(self, shard: int, entry_id: str, fields: Mapping[bytes, bytes]) -> None:
        item: FeedItem | None = None
        for client in list(self.clients):
            if item is None:
                assert self.marks is not None
                item = FeedItem.from_entry(shard, entry_id, tuple(self.marks), fields, self.parts)
            if not client.filter.matches(item):
                continue
            try:
                client.queue.put_nowait(item)
            except asyncio.QueueFull:
                client.overflowed = True
                if not client.catching_up:
                    self.clients.discard(client)
                    # Wake the client so it notices at once.
                    with contextlib.suppress(asyncio.QueueEmpty):
                        client.queue.get_nowait()
                    client.queue.put_nowait(item)

    def tokens(self) -> set[str]:
        """The digests of the tokens clients stream with now."""
        return {c.token for c in self.clients if c.token}

    def revoke(self, tokens: Collection[str]) -> int:
        """End the streams of clients whose token is in ``tokens``; how many."""
        ended = 0
        for client in list(self.clients):
            if client.token in tokens:
                client.revoked = True
                self.clients.discard(client)
                with contextlib.suppress(asyncio.QueueEmpty):
                    if client.queue.full():
                        client.queue.get_nowait()
                client.queue.put_nowait(None)  # wake it: it ends at once
                ended += 1
        return ended

    async def _history(self, shard: int, marks: list[Mark], count: int = 500) -> list[FeedItem]:
        """Up to ``count`` entries of one shard's feed after ``marks``, each
        with the position after it (``marks`` moves along)."""
        after = mark_text(marks[shard])
        rows = await self.log.redis.xrange(self.keys[shard], f"({after}", "+", count=count)
        out = []
        for raw_id, fields in rows:
            await self._know(fields)
            entry_id = raw_id.decode()
            marks[shard] = stream_id_key(entry_id)
            out.append(
                FeedItem.from_entry(shard, entry_id, tuple(marks), fields, self.parts, live=False)
            )
        return out

    def marks_of(self, last_id: str) -> list[Mark] | None:
        """The marks of an SSE id this feed gave out; None when it has another
        number of shards (given out before the layout changed: the client
        must resync). :class:`~web.position.PositionError` if it is no position."""
        marks = decode_position(last_id)
        if marks == ((0, 0),):  # "0" or "0-0": from the start of every feed
            return [(0, 0)] * len(self.keys)
        return list(marks) if len(marks) == len(self.keys) else None

    async def dropped_after(self, last_id: str, redis: Redis | None = None) -> bool:
        """Whether the capped feeds have dropped entries after the position
        ``last_id`` (asked with ``redis``, else the reader's client), or it is
        a position of another layout."""
        try:
            marks = self.marks_of(last_id)
        except PositionError:
            return True
        if marks is None:
            return True
        async with (redis or self.log.redis).pipeline(transaction=False) as pipe:
            for key in self.keys:
                pipe.xinfo_stream(key)
            infos = await pipe.execute(raise_on_error=False)
        return any(_dropped(info, mark) for info, mark in zip(infos, marks))

    async def follow(
        self,
        flt: FeedFilter,
        last_id: str | None = None,
        *,
        checked: bool = False,
        token: str = "",
    ) -> AsyncIterator[list[FeedItem]]:
        """The matching view changes after the position ``last_id`` (from the
        feeds), then live ones, in batches of whatever is ready (one write to
        the socket each). Raises :class:`Resync` when the client must re-read
        the views, :class:`Revoked` once :meth:`revoke` names ``token`` (the
        digest of the API token the client streams with; "" when auth is off).
        ``checked``: the caller has found :meth:`dropped_after` false already."""
        client = _Client(flt, self.buffer, token)
        self.clients.add(client)
        try:
            sent = [(0, 0)] * len(self.keys)
            if last_id is not None:
                client.catching_up = True
                if not checked and await self.dropped_after(last_id):
                    # The capped feed dropped entries this client never saw.
                    raise Resync()
                marks = self.marks_of(last_id)
                if marks is None:
                    raise Resync()
                while True:
                    for shard in range(len(self.keys)):
                        while True:
                            if client.revoked:
                                raise Revoked()
                            batch = await self._history(shard, marks)
                            if wanted := [item for item in batch if flt.matches(item)]:
                                yield wanted
                            if len(batch) < 500:
                                break
                    sent = list(marks)
                    if not client.overflowed:
                        break
                    client.overflowed = False  # the feeds have what the queue dropped
                    while not client.queue.empty():
                        client.queue.get_nowait()
                client.catching_up = False
            while True:
                if client.overflowed and client not in self.clients:
                    raise Resync()
                ready = [await client.queue.get()]
                while not client.queue.empty():
                    ready.append(client.queue.get_nowait())
                if client.revoked:
                    raise Revoked()
                if client.overflowed and client not in self.clients:
                    raise Resync()
                fresh = []
                for item in ready:
                    if item is None or item.mark <= sent[item.shard]:
                        continue
                    if all(m >= s for m, s in zip(item.marks, sent)):
                        sent = list(item.marks)
                    else:  # this client read further on another shard's feed
                        sent[item.shard] = item.mark
                        item = item.at(tuple(max(m, s) for m, s in zip(item.marks, sent)))
                        sent = list(item.marks)
                    fresh.append(item)
                if fresh:
                    yield fresh
        finally:
            self.clients.discard(client)


def _dropped(info: Any, mark: Mark) -> bool:
    """Whether a feed (its XINFO STREAM) has dropped entries after ``mark``."""
    if isinstance(info, ResponseError):  # no feed yet
        return False
    if isinstance(info, Exception):
        raise info
    deleted = info.get("max-deleted-entry-id")
    if deleted is not None:  # Redis 7+: exact
        return stream_id_key(text(deleted)) > mark
    first = info.get("first-entry")
    if not first or int(info.get("length", 0)) < FEED_MAXLEN * 9 // 10:
        return False  # Redis 6.2: never trimmed while below the cap
    return stream_id_key(text(first[0])) > mark
