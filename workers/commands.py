"""The node side of the control channel: read commands, act, acknowledge.

Commands arrive on the node's own control stream and on the broadcast stream;
each one is answered with ``ControlAcked`` (ok or not, with a detail), so the
issuer knows it was seen. Positions start at the streams' newest ids when the
worker starts: commands issued while no worker of that name ran are not
replayed to a new process.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import msgspec

from eventcore.config import WorkerSettings
from eventcore.events import (
    ControlAcked,
    ControlIssued,
    ControlKind,
    NodePaused,
    NodeResumed,
)
from eventcore.nodes import append_node_event
from workers.writes import persist

if TYPE_CHECKING:
    from workers.worker import Worker

__all__ = ["control_loop", "handle", "note_positions"]

log = logging.getLogger(__name__)

# Worker settings a running node may change (update_config).
LIVE_SETTINGS = (
    "heartbeat_interval",
    "heartbeat_timeout",
    "reclaim_interval",
    "release_interval",
    "shutdown_grace",
)


async def note_positions(worker: Worker) -> None:
    """Start the control streams at their newest ids, unless already started.
    The worker calls this before it announces itself, so a command issued
    once its ``NodeStarted`` is visible is never missed."""
    elog = worker.log
    for stream in (elog.keys.control(worker.node), elog.keys.control_broadcast()):
        if stream not in worker.control_positions:
            newest = await elog.redis.xrevrange(stream, count=1)
            worker.control_positions[stream] = newest[0][0].decode() if newest else "0-0"


async def control_loop(worker: Worker) -> None:
    elog = worker.log
    # The positions live on the worker: a loop restarted after a Redis error
    # goes on from the last command it handled, skipping none.
    await note_positions(worker)
    positions = worker.control_positions
    while not worker.closing:
        for entry in await elog.tail(positions, block_ms=500, park_bad=True):
            positions[entry.stream] = entry.id
            if isinstance(entry.event, ControlIssued):
                cmd = entry.event
                ok, detail = await handle(worker, cmd)
                ack = ControlAcked(
                    command_id=cmd.command_id, node=worker.node, ok=ok, detail=detail
                )
                await persist(
                    f"control.acked of command {cmd.command_id} ({cmd.kind.value})",
                    lambda ack=ack: elog.append(ack),
                    stop=lambda: worker.closing,
                )


async def handle(worker: Worker, cmd: ControlIssued) -> tuple[bool, str]:
    """Carry out one command; returns (ok, detail) for the ack."""
    args = cmd.args
    by = cmd.issued_by
    try:
        match cmd.kind:
            case ControlKind.PING:
                return True, f"pong: {worker.inflight} in flight, {worker.free} free slots"
            case ControlKind.PAUSE:
                worker.paused = True
                await append_node_event(worker.log, NodePaused(node=worker.node, by=by))
                return True, "paused: no new tasks are claimed"
            case ControlKind.RESUME:
                worker.paused = False
                worker.wake_claim()
                await append_node_event(worker.log, NodeResumed(node=worker.node, by=by))
                return True, "resumed"
            case ControlKind.DRAIN | ControlKind.SHUTDOWN:
                worker.drain(f"{cmd.kind.value} by {by}")
                return True, f"draining {worker.inflight} tasks, then stopping"
            case ControlKind.SET_CONCURRENCY:
                n = int(args["concurrency"])
                if n < 1:
                    return False, "concurrency must be >= 1"
                worker.concurrency = n
                worker.pool.size = n
                worker.wake_claim()
                return True, f"concurrency {n}"
            case ControlKind.CANCEL_TASK:
                task_id = str(args["task_id"])
                if worker.cancel_running(task_id):
                    return True, f"cancelling {task_id}"
                return False, f"task {task_id} is not running on {worker.node}"
            case ControlKind.UPDATE_CONFIG:
                unknown = sorted(set(args) - set(LIVE_SETTINGS))
                if unknown:
                    return (
                        False,
                        f"cannot change {', '.join(unknown)} on a running worker "
                        f"(can: {', '.join(LIVE_SETTINGS)})",
                    )
                merged = msgspec.to_builtins(worker.settings.worker) | args
                new = msgspec.convert(merged, WorkerSettings, strict=False)
                worker.settings = msgspec.structs.replace(worker.settings, worker=new)
                return True, "updated " + ", ".join(sorted(args))
            case ControlKind.RELOAD_HANDLERS:
                worker.registry.reload()
                worker.pool.reload()
                return True, "handlers: " + ", ".join(worker.registry.names())
    except (KeyError, ValueError, TypeError, msgspec.ValidationError) as exc:
        return False, f"bad arguments for {cmd.kind.value}: {exc}"
    except Exception as exc:  # an ack must always go out
        log.exception("control command %s failed", cmd.kind)
        return False, f"{type(exc).__name__}: {exc}"
    return False, f"unknown command {cmd.kind}"
