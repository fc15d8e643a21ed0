"""Node events and liveness.

Every node event is appended by one script that also records the node's last
sign of life (``nodes:seen``); ``NodeStopped`` forgets it. Any process can
look for nodes whose last sign of life is too old and declare them lost;
the ``mark_lost`` script makes sure that happens once per silence, however
many processes notice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping

import msgspec

from eventcore.codec import NODE, encode
from eventcore.errors import DecodeError
from eventcore.events import Event, NodeLost, NodeStarted
from eventcore.log import EventLog

logger = logging.getLogger("eventcore.nodes")

__all__ = [
    "NodeRecord",
    "announced_nodes",
    "append_node_event",
    "last_seen",
    "live_nodes",
    "mark_lost",
    "queue_consumers",
    "read_queue_consumers",
]


async def append_node_event(log: EventLog, event: Event, *, now: float | None = None) -> str:
    """Append a node event (``NodeStarted``, ``NodeHeartbeat``, ...) and update
    the node's liveness; returns the entry id."""
    now_ms = int((time.time() if now is None else now) * 1000)
    return await log.node_event(event, now_ms)


async def last_seen(log: EventLog) -> dict[str, float]:
    """Every live node and the time (seconds) of its last sign of life."""
    raw = await log.redis.hgetall(log.keys.nodes_seen())
    return {k.decode(): int(v) / 1000 for k, v in raw.items()}


async def mark_lost(
    log: EventLog, node: str, *, silent_for: float, noticed_by: str, now: float | None = None
) -> bool:
    """Declare ``node`` lost if it has been silent for ``silent_for`` seconds.
    True if this call wrote the ``NodeLost`` (only one caller ever does)."""
    now = time.time() if now is None else now
    seen = (await last_seen(log)).get(node)
    if seen is None or now - seen < silent_for:
        return False
    event = NodeLost(node=node, last_seen=seen, noticed_by=noticed_by)
    deadline_ms = int((now - silent_for) * 1000)
    return await log.scripts.mark_lost(
        nodes=log.keys.nodes(),
        seen=log.keys.nodes_seen(),
        info=log.keys.nodes_info(),
        node=node,
        deadline_ms=deadline_ms,
        event=encode(event),
    )


class NodeRecord(msgspec.Struct, frozen=True):
    """What a node announced, and its last sign of life (None once it stopped)."""

    started: NodeStarted
    last_seen: float | None

    def alive(self, silent_for: float, now: float) -> bool:
        """Heard from in the ``silent_for`` seconds before ``now``."""
        return self.last_seen is not None and now - self.last_seen <= silent_for


async def announced_nodes(log: EventLog) -> dict[str, NodeRecord]:
    """Every node that announced itself and has not been forgotten, in one
    round trip. A record that does not decode is logged, naming the node,
    and left out."""
    async with log.redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(log.keys.nodes_seen())
        pipe.hgetall(log.keys.nodes_info())
        seen, info = await pipe.execute()
    out: dict[str, NodeRecord] = {}
    for raw_node, data in info.items():
        node = raw_node.decode()
        try:
            event = NODE.decode(data, stream=log.keys.nodes_info(), entry_id=node)
        except DecodeError as exc:
            logger.error("node record left out: %s", exc)
            continue
        if isinstance(event, NodeStarted):
            ms = seen.get(raw_node)
            out[node] = NodeRecord(event, None if ms is None else int(ms) / 1000)
    return out


async def live_nodes(
    log: EventLog, *, silent_for: float, now: float | None = None
) -> dict[str, NodeStarted]:
    """The ``NodeStarted`` of every node heard from in the last ``silent_for``
    seconds (one round trip)."""
    now = time.time() if now is None else now
    return {
        node: rec.started
        for node, rec in (await announced_nodes(log)).items()
        if rec.alive(silent_for, now)
    }


def queue_consumers(
    records: Mapping[str, NodeRecord], queues: Iterable[str], *, silent_for: float, now: float
) -> dict[str, int]:
    """How many live nodes read each queue: every name in ``queues`` (0 when
    none does) and any other queue a live node announced. A node counts while
    it has been heard from in the last ``silent_for`` seconds, as routing
    sees it; a queue with waiting work and 0 here is stranded until a node
    that reads it starts (or a routed task there is moved, see
    :mod:`workers.reroute`)."""
    out = dict.fromkeys(queues, 0)
    for rec in records.values():
        if rec.alive(silent_for, now):
            for q in rec.started.queues:
                out[q] = out.get(q, 0) + 1
    return out


async def read_queue_consumers(
    log: EventLog, queues: Iterable[str], *, silent_for: float, now: float | None = None
) -> dict[str, int]:
    """:func:`queue_consumers` of the node records as they are now (one round trip).
    The one count the queue list, the metrics, ``eventcore status`` and the
    rerouting loop all use."""
    now = time.time() if now is None else now
    return queue_consumers(await announced_nodes(log), queues, silent_for=silent_for, now=now)
