"""Moving stranded tasks: a routed task that waits on a queue no live node
reads is moved to a queue a live node reads, if one can take it.

The router already prefers served queues (:mod:`eventcore.routing`), but it
decides with what it knows at submit time: a task routed before any worker
announced itself, or just before the only node reading its queue stopped,
can wait on a queue nobody reads. Every worker runs :func:`reroute_loop`,
like the delayed-task release loop; many may run at once, because each move
is one script that moves an entry only while it still waits (never one a
worker has claimed), so an entry moves once.

The rule (:func:`plan`, pure): a waiting entry moves when

- its task was *routed* (``TaskSubmitted.routed``); a task whose submitter
  named the queue is never moved, nor one submitted before that field existed;
- no live node reads its queue; and
- routing it again with the live nodes as they are now picks another queue,
  which a live node reads (same rule as at submit time: the served eligible
  queue with the least backlog).

The move appends ``TaskRerouted`` (from, to, reason, by) and replaces the
work entry in the same script; the task keeps its status and attempt. The new
entry goes to the end of its new stream.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Mapping, Sequence

import msgspec

from eventcore.codec import TASK, encode, text
from eventcore.config import QueueConfig, Settings
from eventcore.errors import DecodeError
from eventcore.events import PRIORITIES_HIGH_FIRST, Priority, TaskRerouted, TaskSubmitted
from eventcore.ids import stream_id_key
from eventcore.log import EventLog, Reroute, RerouteResult
from eventcore.nodes import read_queue_consumers
from eventcore.routing import RoutingError, backlog, route

__all__ = ["Move", "Waiting", "plan", "reroute_loop", "reroute_once", "waiting_entries"]

logger = logging.getLogger(__name__)

# Entries read per work stream and pass: a large backlog moves over a few passes.
BATCH = 200


class Waiting(msgspec.Struct, frozen=True):
    """A work entry no worker has taken yet."""

    stream: str
    entry_id: str
    queue: str
    priority: Priority
    submitted: TaskSubmitted


class Move(msgspec.Struct, frozen=True):
    """One entry to move, where, and why."""

    entry: Waiting
    to_queue: str
    reason: str


def plan(
    waiting: Sequence[Waiting],
    queues: Sequence[QueueConfig],
    served: Collection[str],
    lengths: Mapping[str, int],
) -> list[Move]:
    """The moves for ``waiting`` entries (pure; see the module's rule).
    ``served`` names the queues live nodes read, ``lengths`` their backlog;
    each move counts towards the backlog of the queue it goes to, so a
    batch spreads over equally loaded queues as submits would."""
    if not served:
        return []  # nowhere better to go
    load = dict(lengths)
    moves = []
    for w in waiting:
        if not w.submitted.routed or w.queue in served:
            continue
        spec = w.submitted.spec
        try:
            to = route(spec.kind, spec.model, None, queues, load, served=served)
        except RoutingError:
            continue  # no queue takes it any more (config changed): leave it
        if to == w.queue or to not in served:
            continue
        load[to] = load.get(to, 0) + 1
        reason = f"no live node reads {w.queue}; a live node reads {to}"
        moves.append(Move(w, to, reason))
    return moves


async def waiting_entries(
    log: EventLog,
    queues: Sequence[str],
    *,
    limit: int = BATCH,
    cursors: dict[str, str] | None = None,
) -> list[Waiting]:
    """Entries of ``queues`` that no worker has been handed yet, at most
    ``limit`` per work stream, in two round trips. Entries whose spec does
    not decode are logged and left to the worker that claims them (it
    dead-letters them).

    ``cursors`` (work stream -> last entry id read), kept by the caller
    between calls, makes a long stream be read page by page: a call starts
    after its cursor and moves it on, and a stream read to its end starts
    over next time. Without it, a backlog of pinned tasks longer than
    ``limit`` would hide the routed ones behind it for ever."""
    k = log.keys
    streams = [
        (k.work(p, q, prio), q, prio)
        for p in k.all_partitions()
        for q in queues
        for prio in PRIORITIES_HIGH_FIRST
    ]
    if not streams:
        return []
    async with log.redis.pipeline(transaction=False) as pipe:
        for stream, _, _ in streams:
            pipe.xinfo_groups(stream)
        infos = await pipe.execute(raise_on_error=False)
    starts: list[tuple[str, str, Priority, str]] = []
    for (stream, q, prio), info in zip(streams, infos):
        if isinstance(info, Exception):
            continue  # no such stream: nothing waits there
        delivered = next(
            (text(g["last-delivered-id"]) for g in info if text(g["name"]) == log.group), None
        )
        # Start after the cursor, or after the last entry handed to a worker
        # if that is further on.
        after = cursors.get(stream) if cursors is not None else None
        if after is None or (
            delivered is not None and stream_id_key(delivered) > stream_id_key(after)
        ):
            after = delivered
        starts.append((stream, q, prio, "-" if after is None else "(" + after))
    if not starts:
        return []
    async with log.redis.pipeline(transaction=False) as pipe:
        for stream, _, _, start in starts:
            pipe.xrange(stream, min=start, max="+", count=limit)
        replies = await pipe.execute()
    out = []
    for (stream, q, prio, _), raw in zip(starts, replies):
        if cursors is not None:
            if len(raw) >= limit:
                cursors[stream] = text(raw[-1][0])
            else:
                cursors.pop(stream, None)
        for eid, fields in raw:
            entry_id = text(eid)
            try:
                sub = TASK.decode(fields.get(b"spec", b""), stream=stream, entry_id=entry_id)
            except DecodeError as exc:
                logger.error("cannot tell whether to move %s: %s", entry_id, exc)
                continue
            if isinstance(sub, TaskSubmitted):
                out.append(Waiting(stream, entry_id, q, prio, sub))
    return out


async def reroute_once(
    log: EventLog,
    queues: Sequence[QueueConfig],
    *,
    silent_for: float,
    by: str,
    now: float | None = None,
    cursors: dict[str, str] | None = None,
    limit: int = BATCH,
) -> list[RerouteResult]:
    """One pass: read which queues live nodes read, the entries waiting on the
    others, and move those :func:`plan` says. Returns what each move did.
    ``cursors`` and ``limit``: see :func:`waiting_entries`."""
    names = [q.name for q in queues]
    consumers = await read_queue_consumers(log, names, silent_for=silent_for, now=now)
    served = {q for q, n in consumers.items() if n > 0}
    unserved = [q for q in names if q not in served]
    if not served or not unserved:
        return []
    waiting = await waiting_entries(log, unserved, limit=limit, cursors=cursors)
    if not waiting:
        return []
    lengths = await backlog(log, sorted(served & set(names)))
    moves = plan(waiting, queues, served, lengths)
    requests = []
    for m in moves:
        e = m.entry
        p = log.keys.partition(e.submitted.task_id)
        new_spec = msgspec.structs.replace(e.submitted.spec, queue=m.to_queue)
        requests.append(
            Reroute(
                stream=e.stream,
                entry_id=e.entry_id,
                to_stream=log.keys.work(p, m.to_queue, e.priority),
                event=TaskRerouted(
                    task_id=e.submitted.task_id,
                    from_queue=e.queue,
                    to_queue=m.to_queue,
                    reason=m.reason,
                    by=by,
                ),
                spec=encode(msgspec.structs.replace(e.submitted, spec=new_spec)),
            )
        )
    results = await log.reroute(requests)
    for req, res in zip(requests, results):
        if res.ok:
            logger.info(
                "moved task %s from %s to %s (%s)",
                req.event.task_id,
                req.event.from_queue,
                req.event.to_queue,
                req.event.reason,
            )
    return results


async def reroute_loop(
    log: EventLog, settings: Callable[[], Settings], *, by: str, stopping: Callable[[], bool]
) -> None:
    """Every ``reclaim_interval`` seconds, move stranded routed tasks. ``settings``
    gives the settings as they are now; ``by`` names the node that moves them."""
    ws = settings().worker
    cursors: dict[str, str] = {}
    while not stopping():
        await asyncio.sleep(ws.reclaim_interval)
        await reroute_once(
            log,
            settings().queues,
            silent_for=ws.heartbeat_timeout,
            by=by,
            now=time.time(),
            cursors=cursors,
        )
