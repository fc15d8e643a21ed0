"""Node events: a worker process's life, on the global node stream.

``NodeStarted`` → ``NodeHeartbeat``* → ``NodePaused`` / ``NodeResumed`` /
``NodeDraining`` → ``NodeStopped``; or ``NodeLost``, written by whichever
process first notices the node's heartbeat expired.
"""

from __future__ import annotations

import msgspec

from eventcore.events._base import Event


class GpuInfo(msgspec.Struct, frozen=True, kw_only=True):
    index: int
    name: str
    memory_mb: int


class Capabilities(msgspec.Struct, frozen=True, kw_only=True):
    """What a worker can run: announced in ``NodeStarted``, matched against queues."""

    cpu_cores: int
    memory_mb: int
    gpus: tuple[GpuInfo, ...] = ()
    handlers: tuple[str, ...] = ()
    models: tuple[str, ...] = ()


class NodeStarted(Event, frozen=True, tag="node.started"):
    node: str
    capabilities: Capabilities
    queues: tuple[str, ...] = ()
    concurrency: int = 1
    host: str = ""
    pid: int | None = None
    version: str = ""


class NodeHeartbeat(Event, frozen=True, tag="node.heartbeat"):
    node: str
    running: tuple[str, ...] = ()
    free_slots: int = 0
    load: float = 0.0
    memory_free_mb: int | None = None
    gpu_memory_free_mb: tuple[int, ...] = ()
    warm_models: tuple[str, ...] = ()


class NodePaused(Event, frozen=True, tag="node.paused"):
    node: str
    by: str = ""


class NodeResumed(Event, frozen=True, tag="node.resumed"):
    node: str
    by: str = ""


class NodeDraining(Event, frozen=True, tag="node.draining"):
    node: str
    reason: str = ""


class NodeStopped(Event, frozen=True, tag="node.stopped"):
    node: str
    reason: str = ""


class NodeLost(Event, frozen=True, tag="node.lost"):
    node: str
    last_seen: float
    noticed_by: str


NodeEvent = (
    NodeStarted | NodeHeartbeat | NodePaused | NodeResumed | NodeDraining | NodeStopped | NodeLost
)

NODE_EVENT_TYPES: tuple[type[Event], ...] = NodeEvent.__args__  # type: ignore[attr-defined]
