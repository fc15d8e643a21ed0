"""Node events and liveness.

Every node event is appended by one script that also records the node's last
sign of life (``nodes:seen``); ``NodeStopped`` forgets it. Any process can
look for nodes whose last sign of life is too old and declare them lost;
the ``mark_lost`` script makes sure that happens once per silence, however
many processes notice.
"""

from __future__ import annotations

import time

from eventcore.codec import NODE, encode
from eventcore.events import Event, NodeLost, NodeStarted
from eventcore.log import EventLog, node_event_args

__all__ = ["append_node_event", "last_seen", "live_nodes", "mark_lost"]


async def append_node_event(log: EventLog, event: Event, *, now: float | None = None) -> str:
    """Append a node event (``NodeStarted``, ``NodeHeartbeat``, ...) and update
    the node's liveness; returns the entry id."""
    now_ms = int((time.time() if now is None else now) * 1000)
    eid = await log.scripts.node_event(
        keys=log.node_event_keys(), args=node_event_args(event, now_ms)
    )
    return eid.decode() if isinstance(eid, bytes) else eid


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
    eid = await log.scripts.mark_lost(
        keys=log.node_event_keys(),
        args=[node, deadline_ms, encode(event)],
    )
    return eid is not None


async def live_nodes(
    log: EventLog, *, silent_for: float, now: float | None = None
) -> dict[str, NodeStarted]:
    """The ``NodeStarted`` of every node heard from in the last ``silent_for``
    seconds (one round trip)."""
    now = time.time() if now is None else now
    async with log.redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(log.keys.nodes_seen())
        pipe.hgetall(log.keys.nodes_info())
        seen, info = await pipe.execute()
    out: dict[str, NodeStarted] = {}
    for raw_node, raw_ms in seen.items():
        data = info.get(raw_node)
        if data is None or now - int(raw_ms) / 1000 > silent_for:
            continue
        event = NODE.decode(data, stream=log.keys.nodes_info(), entry_id=raw_node.decode())
        if isinstance(event, NodeStarted):
            out[raw_node.decode()] = event
    return out
