"""Consumer-group helpers for work streams (and any other stream read by a group).

Thin, typed wrappers over XGROUP / XREADGROUP / XCLAIM / XAUTOCLAIM /
XPENDING that hide the differences between Redis versions (XAUTOCLAIM answers
with 2 items on 6.2 and 3 on 7+) and turn raw replies into :class:`WorkEntry`.
Claiming new entries and renewing a lease are scripts (through the typed
wrappers of :mod:`eventcore.log.scripts`): renewing must not take an entry another
consumer holds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from eventcore.codec import TASK, text
from eventcore.events import TaskSubmitted
from eventcore.log.scripts import Scripts

__all__ = [
    "AutoclaimResult",
    "ClaimResult",
    "PendingEntry",
    "PendingSummary",
    "WorkEntry",
    "autoclaim",
    "claim",
    "claim_new",
    "ensure_group",
    "pending",
    "pending_summary",
    "read_group",
    "renew",
]


class WorkEntry:
    """One entry of a work stream, as a worker holds it."""

    __slots__ = (
        "_submitted",
        "attempt",
        "cancel_requested",
        "deliveries",
        "id",
        "spec",
        "stream",
        "task_id",
    )

    def __init__(
        self,
        stream: str,
        entry_id: str,
        task_id: str,
        attempt: int,
        spec: bytes,
        deliveries: int = 1,
    ) -> None:
        self.stream = stream
        self.id = entry_id
        self.task_id = task_id
        self.attempt = attempt
        self.spec = spec
        self.deliveries = deliveries
        self.cancel_requested = False
        self._submitted: TaskSubmitted | None = None

    @classmethod
    def from_reply(
        cls, stream: str, entry_id: bytes | str, fields: Mapping[bytes, bytes]
    ) -> WorkEntry:
        eid = text(entry_id)
        return cls(
            stream,
            eid,
            fields.get(b"task", b"").decode(),
            int(fields.get(b"attempt", b"1")),
            fields.get(b"spec", b""),
        )

    @property
    def submitted(self) -> TaskSubmitted:
        """The task's ``TaskSubmitted`` event, decoded on first use.

        Raises :class:`~eventcore.errors.DecodeError` naming the entry if the
        spec is damaged.
        """
        if self._submitted is None:
            self._submitted = TASK.decode(self.spec, stream=self.stream, entry_id=self.id)
        return self._submitted

    def __repr__(self) -> str:
        return (
            f"WorkEntry({self.stream!r}, {self.id!r}, task={self.task_id!r}, "
            f"attempt={self.attempt}, deliveries={self.deliveries})"
        )


class PendingEntry(msgspec.Struct, frozen=True):
    id: str
    consumer: str
    idle_ms: int
    deliveries: int


class PendingSummary(msgspec.Struct, frozen=True):
    count: int
    lowest: str | None
    highest: str | None
    consumers: dict[str, int]


class AutoclaimResult(msgspec.Struct, frozen=True):
    next_start: str
    entries: list[WorkEntry]
    deleted: list[str]


async def ensure_group(redis: Redis, stream: str, group: str, start_id: str = "0") -> bool:
    """Create ``group`` on ``stream`` (creating the stream too). True if created,
    False if it already existed (BUSYGROUP is success)."""
    try:
        await redis.xgroup_create(stream, group, id=start_id, mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" in str(exc):
            return False
        raise
    return True


async def read_group(
    redis: Redis,
    group: str,
    consumer: str,
    streams: Sequence[str],
    *,
    count: int,
    block_ms: int | None = None,
) -> list[WorkEntry]:
    """New entries (``>``) for ``consumer``, at most ``count`` in all, taking
    the streams in the order given (put higher priorities first)."""
    out: list[WorkEntry] = []
    for i, stream in enumerate(streams):
        want = count - len(out)
        if want <= 0:
            break
        # Block only on the last stream, and only if nothing was found before it.
        block = block_ms if (i == len(streams) - 1 and not out) else None
        reply = await redis.xreadgroup(group, consumer, {stream: ">"}, count=want, block=block)
        for _key, entries in reply or ():
            out.extend(WorkEntry.from_reply(stream, eid, f) for eid, f in entries if f)
    return out


class ClaimResult(msgspec.Struct, frozen=True):
    entries: list[WorkEntry]
    last_ids: dict[str, str]  # newest id of each stream looked at, for a blocking wait


async def claim_new(
    scripts: Scripts,
    cancels_key: str,
    streams: Sequence[str],
    group: str,
    consumer: str,
    count: int,
) -> ClaimResult:
    """Up to ``count`` new entries from ``streams`` (one partition), taken in
    the order given, in one round trip; missing groups are created. Each entry
    says whether its task has a pending cancel request. ``last_ids`` lets the
    caller block on XREAD for anything newer without a gap."""
    claimed = await scripts.claim(
        cancels=cancels_key, streams=streams, group=group, consumer=consumer, count=count
    )
    entries: list[WorkEntry] = []
    for index, eid, fields, cancel in claimed.entries:
        entry = WorkEntry.from_reply(streams[index], eid, fields)
        entry.cancel_requested = cancel
        entries.append(entry)
    return ClaimResult(entries, dict(zip(streams, claimed.last_ids)))


async def claim(
    redis: Redis, stream: str, group: str, consumer: str, min_idle_ms: int, ids: Sequence[str]
) -> list[WorkEntry]:
    """XCLAIM the given entries (increments their delivery counts)."""
    if not ids:
        return []
    reply = await redis.xclaim(stream, group, consumer, min_idle_ms, list(ids))
    return [WorkEntry.from_reply(stream, eid, f) for eid, f in reply if f]


async def autoclaim(
    redis: Redis,
    stream: str,
    group: str,
    consumer: str,
    min_idle_ms: int,
    *,
    start: str = "0-0",
    count: int = 100,
) -> AutoclaimResult:
    """XAUTOCLAIM entries idle longer than ``min_idle_ms``, with their delivery counts.

    Entries deleted from the stream while pending are reported in ``deleted``
    (Redis 7 drops them from the PEL itself; on 6.2 they come back as nil).
    """
    reply: list[Any] = await redis.xautoclaim(
        stream, group, consumer, min_idle_ms, start_id=start, count=count
    )
    next_start = text(reply[0])
    entries: list[WorkEntry] = []
    deleted: list[str] = [text(x) for x in reply[2]] if len(reply) > 2 else []
    lost_on_62 = False
    for item in reply[1]:
        if item is None or item[0] is None or not item[1]:
            # Redis 6.2 answers (nil, nil) for an entry deleted while pending,
            # and keeps it in the PEL; 7+ lists it in reply[2] and drops it.
            lost_on_62 = True
            continue
        entries.append(WorkEntry.from_reply(stream, item[0], item[1]))
    if lost_on_62:
        deleted += await _deleted_but_pending(redis, stream, group, consumer, start, next_start)
    if entries:
        counts = {
            p.id: p.deliveries
            for p in await pending(
                redis,
                stream,
                group,
                start=entries[0].id,
                end=entries[-1].id,
                count=len(entries) * 4,
            )
        }
        for entry in entries:
            entry.deliveries = counts.get(entry.id, entry.deliveries)
    return AutoclaimResult(next_start, entries, deleted)


async def _deleted_but_pending(
    redis: Redis, stream: str, group: str, consumer: str, start: str, next_start: str
) -> list[str]:
    """Ids ``consumer`` holds in the scanned range whose entries no longer
    exist; acked, so they leave the PEL as they do on Redis 7."""
    end = "+" if next_start == "0-0" else next_start
    held = [
        p.id
        for p in await pending(
            redis, stream, group, start=start, end=end, count=10_000, consumer=consumer
        )
    ]
    async with redis.pipeline(transaction=False) as pipe:
        for eid in held:
            pipe.xrange(stream, min=eid, max=eid)
        found = await pipe.execute()
    gone = [eid for eid, rows in zip(held, found) if not rows]
    if gone:
        await redis.xack(stream, group, *gone)
    return gone


async def renew(
    redis: Redis, scripts: Scripts, stream: str, group: str, consumer: str, ids: Sequence[str]
) -> list[str]:
    """Reset the idle time of entries ``consumer`` still holds; returns those ids.

    An id missing from the answer was taken over by another consumer (or
    acked): its lease is lost, and a result for it will be recorded as stale.
    """
    if not ids:
        return []
    return await scripts.renew(work=stream, group=group, consumer=consumer, ids=ids)


async def pending(
    redis: Redis,
    stream: str,
    group: str,
    *,
    start: str = "-",
    end: str = "+",
    count: int = 100,
    consumer: str | None = None,
    min_idle_ms: int | None = None,
) -> list[PendingEntry]:
    """The PEL's entries between ``start`` and ``end``."""
    rows = await redis.xpending_range(
        stream, group, min=start, max=end, count=count, consumername=consumer, idle=min_idle_ms
    )
    return [
        PendingEntry(
            text(r["message_id"]),
            text(r["consumer"]),
            int(r["time_since_delivered"]),
            int(r["times_delivered"]),
        )
        for r in rows
    ]


async def pending_summary(redis: Redis, stream: str, group: str) -> PendingSummary:
    """How many entries are pending in ``group``, and per consumer."""
    info = await redis.xpending(stream, group)
    return PendingSummary(
        int(info["pending"]),
        text(info["min"]) if info["min"] else None,
        text(info["max"]) if info["max"] else None,
        {text(c["name"]): int(c["pending"]) for c in info["consumers"] or ()},
    )
