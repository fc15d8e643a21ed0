"""The event log API: atomic appends and reads over Redis Streams.

Every write that touches more than one key is one Lua script (see
``lua/eventcore.lua``), called through the typed wrappers of
:mod:`eventcore.log.scripts`: a fact and the work it implies are written together
or not at all. Calls that take a batch send it in one round trip per
partition.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from redis.asyncio import Redis

from eventcore.codec import CONTROL, NODE, TASK, Codec, Entry, encode, text
from eventcore.errors import DecodeError
from eventcore.events import (
    NODE_EVENT_TYPES,
    TASK_EVENT_TYPES,
    TERMINAL_EVENT_TYPES,
    ControlAcked,
    ControlIssued,
    Event,
    NodeStarted,
    NodeStopped,
    TaskCancelled,
    TaskCancelRequested,
    TaskDeadLettered,
    TaskRetryScheduled,
    TaskScheduled,
    TaskSpec,
    TaskSubmitted,
)
from eventcore.ids import id_time_ms, is_task_id, new_task_id, task_id_in_partition
from eventcore.keys import Keys, check_name
from eventcore.log.groups import WorkEntry
from eventcore.log.records import (
    CancelOutcome,
    CancelResult,
    HeldAppend,
    Reroute,
    RerouteResult,
    Settlement,
    SettleResult,
    Submission,
    SubmitResult,
)
from eventcore.log.scripts import Call, Scripts, SettleItem, SubmitItem, raise_script_errors
from eventcore.log.spread import xread

__all__ = [
    "CancelOutcome",
    "CancelResult",
    "EventLog",
    "HeldAppend",
    "Reroute",
    "RerouteResult",
    "SettleResult",
    "Settlement",
    "Submission",
    "SubmitResult",
    "stream_id_at",
]

DEFAULT_IDEMPOTENCY_TTL = 24 * 3600.0


def stream_id_at(t: float) -> str:
    """The smallest stream id written at or after time ``t`` (seconds since the epoch)."""
    return f"{int(t * 1000)}-0"


class EventLog:
    """Atomic appends to, and reads from, one deployment's streams."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        group: str = "workers",
        idempotency_ttl: float = DEFAULT_IDEMPOTENCY_TTL,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.group = group
        self.idempotency_ttl = idempotency_ttl
        self.scripts = Scripts(redis)

    # -- submit ----------------------------------------------------------------

    async def submit(
        self,
        spec: TaskSpec,
        *,
        idempotency_key: str | None = None,
        run_at: float | None = None,
        task_id: str | None = None,
        routed: bool = False,
    ) -> SubmitResult:
        """Append ``TaskSubmitted`` and add the work entry (or the delayed item),
        atomically. With an idempotency key that was seen within the TTL, the
        earlier task's id is returned and nothing is written. ``routed`` says
        the router chose ``spec.queue`` (the submitter did not name it)."""
        sub = Submission(
            spec=spec,
            idempotency_key=idempotency_key,
            run_at=run_at,
            task_id=task_id,
            routed=routed,
        )
        return (await self.submit_many([sub]))[0]

    async def submit_many(self, subs: Sequence[Submission]) -> list[SubmitResult]:
        """Submit a batch: one script call per partition, all in one round trip."""
        by_part: dict[int, list[tuple[int, str, Submission]]] = defaultdict(list)
        for i, sub in enumerate(subs):
            task_id = self._task_id_for(sub)
            by_part[self.keys.partition(task_id)].append((i, task_id, sub))
        now = time.time()
        ttl_ms = max(1, int(self.idempotency_ttl * 1000))
        calls = []
        for p, items in by_part.items():
            tasks: list[SubmitItem] = []
            for _, task_id, sub in items:
                spec = sub.spec
                check_name("queue", spec.queue)
                submitted = encode(
                    TaskSubmitted(
                        task_id=task_id,
                        spec=spec,
                        idempotency_key=sub.idempotency_key,
                        routed=sub.routed,
                    )
                )
                idem = (
                    self.keys.idempotency(p, spec.tenant, sub.idempotency_key)
                    if sub.idempotency_key
                    else None
                )
                delayed = sub.run_at is not None and sub.run_at > now
                if delayed:
                    assert sub.run_at is not None
                    scheduled = encode(TaskScheduled(task_id=task_id, run_at=sub.run_at))
                    run_at_ms = max(1, int(sub.run_at * 1000))
                    head = _item_head(spec.queue, spec.priority, 1)
                else:
                    scheduled, run_at_ms, head = b"", 0, b""
                work = self.keys.work(p, spec.queue, spec.priority)
                tasks.append(SubmitItem(task_id, submitted, work, idem, run_at_ms, scheduled, head))
            calls.append(
                self.scripts.submit(
                    events=self.keys.events(p),
                    delayed=self.keys.delayed(p),
                    delayed_items=self.keys.delayed_items(p),
                    idempotency_ttl_ms=ttl_ms,
                    tasks=tasks,
                )
            )
        replies = await self.scripts.run(calls)
        out: list[SubmitResult | None] = [None] * len(subs)
        for (_p, items), reply in zip(by_part.items(), replies):
            for (i, _task_id, _sub), r in zip(items, reply):
                out[i] = SubmitResult(r.task_id, r.event_id, r.created)
        return out  # type: ignore[return-value]

    def _task_id_for(self, sub: Submission) -> str:
        if sub.task_id is not None:
            if not is_task_id(sub.task_id):
                raise ValueError(f"task_id {sub.task_id!r} is not a UUIDv7")
            if sub.idempotency_key:
                raise ValueError("give either task_id or idempotency_key, not both")
            return sub.task_id
        if sub.idempotency_key:
            # The key picks the partition, so a retried submit (with a new
            # task id) looks for the key where the first one stored it.
            p = self.keys.partition(f"{sub.spec.tenant}:{sub.idempotency_key}")
            return task_id_in_partition(p, self.keys.partitions)
        return new_task_id()

    # -- plain appends -----------------------------------------------------------

    async def append(self, event: Event) -> str:
        """Append one event to the stream its type belongs to; returns the entry id."""
        return (await self.append_many([event]))[0]

    async def append_many(self, events: Sequence[Event]) -> list[str]:
        """Append events in order, in one round trip. Task events go through the
        append script of their partition, node events through the script that
        also keeps the node's liveness, control events are single XADDs. Ids
        come back in the order given."""
        task_batches: dict[int, list[int]] = defaultdict(list)
        singles: list[tuple[int, str, Event]] = []
        for i, event in enumerate(events):
            if isinstance(event, TASK_EVENT_TYPES):
                task_batches[self.keys.partition(event.task_id)].append(i)  # type: ignore[attr-defined]
            else:
                singles.append((i, self._stream_of(event), event))
        out: list[str] = [""] * len(events)
        async with self.redis.pipeline(transaction=False) as pipe:
            appends = []
            for p, idx in task_batches.items():
                call = self.scripts.append(
                    events=self.keys.events(p),
                    entries=[(events[i].task_id, encode(events[i])) for i in idx],  # type: ignore[attr-defined]
                )
                await call.queue(pipe)
                appends.append(call)
            now_ms = int(time.time() * 1000)
            for _i, stream, event in singles:
                if isinstance(event, NODE_EVENT_TYPES):
                    await self.node_event(event, now_ms).queue(pipe)
                else:
                    pipe.xadd(stream, {"e": encode(event)})
            replies = await pipe.execute(raise_on_error=False)
        raise_script_errors(replies)
        for (_p, idx), call, reply in zip(task_batches.items(), appends, replies):
            for i, eid in zip(idx, call.decode(reply)):
                out[i] = eid
        # node_event answers an entry id, as XADD does
        for (i, _stream, _e), eid in zip(singles, replies[len(task_batches) :]):
            out[i] = text(eid)
        return out

    def node_event(self, event: Event, now_ms: int) -> Call[str]:
        """The node_event call for a node event: the event, whether the node is
        seen (or gone: ``NodeStopped``), and its ``NodeStarted`` kept as its info."""
        data = encode(event)
        return self.scripts.node_event(
            nodes=self.keys.nodes(),
            seen=self.keys.nodes_seen(),
            info=self.keys.nodes_info(),
            node=event.node,  # type: ignore[attr-defined]
            event=data,
            gone=isinstance(event, NodeStopped),
            now_ms=now_ms,
            started=data if isinstance(event, NodeStarted) else b"",
        )

    def _stream_of(self, event: Event) -> str:
        match event:
            case ControlIssued(target=target):
                return self.keys.control_broadcast() if target == "*" else self.keys.control(target)
            case ControlAcked():
                return self.keys.control_acks()
            case _:
                return self.keys.nodes()

    # -- settle: the end of a held work entry ----------------------------------------

    async def settle(self, consumer: str, items: Sequence[Settlement]) -> list[SettleResult]:
        """End held work entries: append each one's events and ack it, atomically,
        in one round trip per partition. An entry this consumer no longer holds,
        or whose task already ended, writes nothing: its result is stale and the
        caller should record that with ``TaskResultStale``."""
        by_part: dict[int, list[int]] = defaultdict(list)
        for i, item in enumerate(items):
            by_part[self.keys.partition(item.entry.task_id)].append(i)
        calls = [
            self.scripts.settle(
                events=self.keys.events(p),
                done=self.keys.done(p),
                cancels=self.keys.cancels(p),
                delayed=self.keys.delayed(p),
                delayed_items=self.keys.delayed_items(p),
                dead_letters=self.keys.dead_letters(p),
                group=self.group,
                consumer=consumer,
                items=[_settle_item(items[i]) for i in idx],
            )
            for p, idx in by_part.items()
        ]
        replies = await self.scripts.run(calls)
        out: list[SettleResult | None] = [None] * len(items)
        for (_p, idx), reply in zip(by_part.items(), replies):
            for i, (ok, detail) in zip(idx, reply):
                out[i] = SettleResult(True, detail) if ok else SettleResult(False, "", detail)
        return out  # type: ignore[return-value]

    async def finish(self, consumer: str, entry: WorkEntry, *events: Event) -> SettleResult:
        """Settle one entry: ``finish(me, entry, claimed, started, succeeded)``.
        The last event decides how it ends (see :class:`Settlement`)."""
        return (await self.settle(consumer, [Settlement(entry, events)]))[0]

    async def append_held(
        self, consumer: str, entry: WorkEntry, events: Sequence[Event]
    ) -> HeldAppend:
        """Append events of a task whose work entry ``consumer`` holds (claimed,
        started, progress), in order, in one call. Nothing is written when the
        entry is no longer held by ``consumer`` (its lease was taken, or it was
        settled): ``written`` is then False with the reason, as settle's stale."""
        if not events:
            raise ValueError("append_held needs at least one event")
        for event in events:
            if getattr(event, "task_id", None) != entry.task_id:
                raise ValueError(f"events for entry of task {entry.task_id} name another task")
        reply = await self.scripts.append_held(
            events=self.keys.events(self.keys.partition(entry.task_id)),
            work=entry.stream,
            group=self.group,
            consumer=consumer,
            entry_id=entry.id,
            task_id=entry.task_id,
            encoded=[encode(e) for e in events],
        )
        return HeldAppend(reply.written, reply.event_ids, reply.not_held)

    # -- cancel and delayed work -------------------------------------------------------

    async def request_cancel(self, task_id: str, *, reason: str = "", by: str = "") -> CancelResult:
        """Record a cancel request. A task waiting in the delayed set is cancelled
        at once; a queued or running one is cancelled by the worker that claims
        or runs it; a task that already ended is left alone and the answer says so."""
        p = self.keys.partition(task_id)
        requested = encode(TaskCancelRequested(task_id=task_id, reason=reason, by=by))
        cancelled = encode(TaskCancelled(task_id=task_id, reason=reason or "cancel requested"))
        kind, detail = await self.scripts.request_cancel(
            events=self.keys.events(p),
            done=self.keys.done(p),
            cancels=self.keys.cancels(p),
            delayed=self.keys.delayed(p),
            delayed_items=self.keys.delayed_items(p),
            task_id=task_id,
            requested=requested,
            cancelled=cancelled,
        )
        outcome = CancelOutcome(kind)
        if outcome is CancelOutcome.ALREADY_DONE:
            return CancelResult(outcome, ended_as=detail)
        return CancelResult(outcome, event_id=detail)

    async def cancel_requested(self, task_ids: Iterable[str]) -> set[str]:
        """Which of these tasks have a pending cancel request (one round trip)."""
        ids = list(task_ids)
        async with self.redis.pipeline(transaction=False) as pipe:
            for tid in ids:
                pipe.sismember(self.keys.cancels(self.keys.partition(tid)), tid)
            flags = await pipe.execute()
        return {tid for tid, flag in zip(ids, flags) if flag}

    async def ended_as(self, task_id: str) -> str | None:
        """The terminal event type of a task that has ended, else None."""
        value = await self.redis.hget(self.keys.done(self.keys.partition(task_id)), task_id)
        return None if value is None else text(value)

    async def release_due(self, now: float | None = None, limit: int = 1000) -> int:
        """Move delayed tasks that are due back to their work streams, in every
        partition. Safe to run from many processes at once."""
        now_ms = int((time.time() if now is None else now) * 1000)
        calls = [
            self.scripts.release_due(
                delayed=self.keys.delayed(p),
                delayed_items=self.keys.delayed_items(p),
                now_ms=now_ms,
                limit=limit,
                work_prefix=self.keys.work_prefix(p),
            )
            for p in self.keys.all_partitions()
        ]
        replies = await self.scripts.run(calls)
        return sum(released for released, _orphans in replies)

    async def reroute(self, moves: Sequence[Reroute]) -> list[RerouteResult]:
        """Move waiting work entries to other queues, each with its
        ``TaskRerouted``, in one round trip. An entry that no longer waits
        (claimed, gone, its task ended) is left alone and answered with why.
        Safe to run from many processes at once: an entry moves once."""
        calls = []
        for move in moves:
            p = self.keys.partition(move.event.task_id)
            calls.append(
                self.scripts.reroute(
                    events=self.keys.events(p),
                    done=self.keys.done(p),
                    from_stream=move.stream,
                    to_stream=move.to_stream,
                    group=self.group,
                    entry_id=move.entry_id,
                    task_id=move.event.task_id,
                    event=encode(move.event),
                    spec=move.spec,
                )
            )
        if not calls:
            return []
        return [
            RerouteResult(r.moved, r.event_id, r.entry_id, r.why)
            for r in await self.scripts.run(calls)
        ]

    # -- reading -----------------------------------------------------------------------

    def codec_of(self, stream: str) -> Codec[Any]:
        """The decoder for a stream key of this deployment."""
        if stream == self.keys.nodes():
            return NODE
        ctl = self.keys.control("")
        if stream.startswith(ctl) or stream in (
            self.keys.control_broadcast(),
            self.keys.control_acks(),
        ):
            return CONTROL
        return TASK

    async def read(
        self,
        stream: str,
        start: str = "-",
        end: str = "+",
        *,
        count: int | None = None,
        park_bad: bool = False,
    ) -> list[Entry[Any]]:
        """Entries of ``stream`` between two ids (inclusive), decoded.

        An undecodable entry raises :class:`DecodeError`, or with ``park_bad``
        is copied to the parked stream with the error and left out.
        """
        raw = await self.redis.xrange(stream, min=start, max=end, count=count)
        return await self._decode(stream, raw, park_bad)

    async def read_between(
        self, stream: str, since: float, until: float | None = None, *, count: int | None = None
    ) -> list[Entry[Any]]:
        """Entries written between two times (seconds since the epoch)."""
        end = "+" if until is None else f"{int(until * 1000)}-18446744073709551615"
        return await self.read(stream, stream_id_at(since), end, count=count)

    async def tail(
        self,
        positions: Mapping[str, str],
        *,
        count: int = 100,
        block_ms: int | None = None,
        park_bad: bool = False,
    ) -> list[Entry[Any]]:
        """Entries after the given ids (``{stream: last_id}``; ``"$"`` = only new
        ones), waiting up to ``block_ms`` for the first. Callers advance their
        positions to the last id they got per stream. On Redis Cluster the
        streams are read per slot (:mod:`eventcore.log.spread`)."""
        reply = await xread(self.redis, positions, count=count, block=block_ms)
        out: list[Entry[Any]] = []
        for stream, raw in reply:
            out += await self._decode(text(stream), raw, park_bad)
        return out

    async def history(self, task_id: str, *, batch: int = 1000) -> list[Entry[Any]]:
        """Every event of one task, in order.

        Scans the partition log from the task's creation time (read from its
        UUIDv7 id, less a minute for clock skew between writers), filtering on
        the ``task`` field before decoding. The projections keep a per-task copy
        for fast serving; this is the source of truth they are checked against.
        """
        stream = self.keys.events(self.keys.partition(task_id))
        start = f"{max(0, id_time_ms(task_id) - 60_000)}-0"
        want = task_id.encode()
        out: list[Entry[Any]] = []
        while True:
            raw = await self.redis.xrange(stream, min=start, max="+", count=batch)
            mine = [(eid, f) for eid, f in raw if f.get(b"task") == want]
            out += await self._decode(stream, mine, park_bad=False)
            if len(raw) < batch:
                return out
            start = "(" + text(raw[-1][0])

    async def park(self, stream: str, entry_id: str, fields: Mapping[Any, Any], error: str) -> str:
        """Copy a bad entry to the parked stream with where it came from and why."""
        record: dict[Any, Any] = {"stream": stream, "entry": entry_id, "error": error}
        record.update({b"raw:" + _b(k): v for k, v in fields.items()})
        return text(await self.redis.xadd(self.keys.parked(), record))

    async def _decode(self, stream: str, raw: list[Any], park_bad: bool) -> list[Entry[Any]]:
        codec = self.codec_of(stream)
        out: list[Entry[Any]] = []
        for eid, fields in raw:
            try:
                out.append(codec.decode_fields(stream, eid, fields))
            except DecodeError as exc:
                if not park_bad:
                    raise
                await self.park(stream, exc.entry_id, fields, exc.detail)
        return out


def _b(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def _item_head(queue: str, priority: Any, attempt: int) -> bytes:
    """The header of a delayed item: ``queue|priority|attempt|`` (then the spec)."""
    return (
        f"{queue}|{priority.value if hasattr(priority, 'value') else priority}|{attempt}|".encode()
    )


def _settle_item(item: Settlement) -> SettleItem:
    if not item.events:
        raise ValueError("a settlement needs at least one event")
    for event in item.events:
        if getattr(event, "task_id", None) != item.entry.task_id:
            raise ValueError(
                f"settlement of task {item.entry.task_id} carries an event of another task"
            )
    last = item.events[-1]
    encoded = [encode(e) for e in item.events]
    match last:
        case TaskRetryScheduled(attempt=attempt, run_at=run_at):
            spec = item.entry.submitted.spec
            head = _item_head(spec.queue, spec.priority, attempt)
            action = ("r", "", max(1, int(run_at * 1000)), head)
        case TaskDeadLettered(reason=reason):
            action = ("d", last.type_name(), 0, reason or "dead-lettered")
        case _ if isinstance(last, TERMINAL_EVENT_TYPES):
            action = ("t", last.type_name(), 0, "")
        case _:
            raise ValueError(
                f"a settlement must end with a terminal, retry or dead-letter event, "
                f"not {last.type_name()}"
            )
    return SettleItem(item.entry.stream, item.entry.task_id, item.entry.id, *action, encoded)
