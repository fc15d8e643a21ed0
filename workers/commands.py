"""The node side of the control channel: read commands, act, acknowledge.

Commands arrive on the node's own control stream and on the broadcast stream;
each one is answered with ``ControlAcked`` (ok or not, with a detail), so the
issuer knows it was seen. Positions start at the streams' newest ids when the
worker starts: commands issued while no worker of that name ran are not
replayed to a new process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

import msgspec

from eventcore.config import Settings, WorkerSettings
from eventcore.events import (
    ControlAcked,
    ControlIssued,
    ControlKind,
    NodePaused,
    NodeResumed,
)
from eventcore.log import EventLog
from eventcore.nodes import append_node_event
from workers.slots import Slots
from workers.writes import persist

__all__ = ["LIVE_SETTINGS", "Control", "Controlled"]

logger = logging.getLogger(__name__)

# Worker settings a running node may change (update_config).
LIVE_SETTINGS = (
    "heartbeat_interval",
    "heartbeat_timeout",
    "reclaim_interval",
    "release_interval",
    "shutdown_grace",
)


class Controlled(Protocol):
    """What a command acts on beyond the slots: the worker process."""

    settings: Settings

    def drain(self, reason: str) -> None:
        """Stop taking work; finish what runs, then stop."""
        ...

    def resize(self, concurrency: int) -> None:
        """Run at most ``concurrency`` tasks at once from now on."""
        ...

    def reload_handlers(self) -> tuple[str, ...]:
        """Load the handlers again (here and in the child processes); their names."""
        ...


class Control:
    """The control channel of one node: reads its commands, acts on ``slots``
    and ``target``, acknowledges each. The read positions live here, not in
    the loop, so a loop restarted after a Redis error goes on from the last
    command it handled, skipping none."""

    def __init__(
        self,
        log: EventLog,
        node: str,
        slots: Slots,
        target: Controlled,
        *,
        stopping: Callable[[], bool],
    ) -> None:
        self.log = log
        self.node = node
        self.slots = slots
        self.target = target
        self.stopping = stopping
        self.positions: dict[str, str] = {}  # control stream -> last id handled
        self.answering = False  # a command is in hand: its ack is not written yet

    async def note_positions(self) -> None:
        """Start the control streams at their newest ids, unless already started.
        The worker calls this before it announces itself, so a command issued
        once its ``NodeStarted`` is visible is never missed."""
        log = self.log
        for stream in (log.keys.control(self.node), log.keys.control_broadcast()):
            if stream not in self.positions:
                newest = await log.redis.xrevrange(stream, count=1)
                self.positions[stream] = newest[0][0].decode() if newest else "0-0"

    async def run(self) -> None:
        """The control loop: answer every command until stopping."""
        log = self.log
        await self.note_positions()
        positions = self.positions
        while not self.stopping():
            for entry in await log.tail(positions, block_ms=500, park_bad=True):
                positions[entry.stream] = entry.id
                if isinstance(entry.event, ControlIssued):
                    cmd = entry.event
                    self.answering = True
                    try:
                        ok, detail = await self.handle(cmd)
                        ack = ControlAcked(
                            command_id=cmd.command_id, node=self.node, ok=ok, detail=detail
                        )
                        await persist(
                            f"control.acked of command {cmd.command_id} ({cmd.kind.value})",
                            lambda ack=ack: log.append(ack),
                            stop=self.stopping,
                        )
                    finally:
                        self.answering = False

    async def handle(self, cmd: ControlIssued) -> tuple[bool, str]:
        """Carry out one command; returns (ok, detail) for the ack."""
        args = cmd.args
        by = cmd.issued_by
        slots = self.slots
        target = self.target
        try:
            match cmd.kind:
                case ControlKind.PING:
                    return True, f"pong: {slots.inflight} in flight, {slots.free} free slots"
                case ControlKind.PAUSE:
                    slots.pause()
                    await append_node_event(self.log, NodePaused(node=self.node, by=by))
                    return True, "paused: no new tasks are claimed"
                case ControlKind.RESUME:
                    slots.resume()
                    await append_node_event(self.log, NodeResumed(node=self.node, by=by))
                    return True, "resumed"
                case ControlKind.DRAIN | ControlKind.SHUTDOWN:
                    target.drain(f"{cmd.kind.value} by {by}")
                    return True, f"draining {slots.inflight} tasks, then stopping"
                case ControlKind.SET_CONCURRENCY:
                    n = int(args["concurrency"])
                    if n < 1:
                        return False, "concurrency must be >= 1"
                    target.resize(n)
                    return True, f"concurrency {n}"
                case ControlKind.CANCEL_TASK:
                    task_id = str(args["task_id"])
                    if slots.cancel(task_id):
                        return True, f"cancelling {task_id}"
                    return False, f"task {task_id} is not running on {self.node}"
                case ControlKind.UPDATE_CONFIG:
                    unknown = sorted(set(args) - set(LIVE_SETTINGS))
                    if unknown:
                        return (
                            False,
                            f"cannot change {', '.join(unknown)} on a running worker "
                            f"(can: {', '.join(LIVE_SETTINGS)})",
                        )
                    merged = msgspec.to_builtins(target.settings.worker) | args
                    new = msgspec.convert(merged, WorkerSettings, strict=False)
                    target.settings = msgspec.structs.replace(target.settings, worker=new)
                    return True, "updated " + ", ".join(sorted(args))
                case ControlKind.RELOAD_HANDLERS:
                    return True, "handlers: " + ", ".join(target.reload_handlers())
        except (KeyError, ValueError, TypeError, msgspec.ValidationError) as exc:
            return False, f"bad arguments for {cmd.kind.value}: {exc}"
        except Exception as exc:  # an ack must always go out
            logger.exception("control command %s failed", cmd.kind)
            return False, f"{type(exc).__name__}: {exc}"
        return False, f"unknown command {cmd.kind}"
