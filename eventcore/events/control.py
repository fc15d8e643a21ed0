"""Control events: commands to nodes and their answers.

``ControlIssued`` goes to one node's control stream or the broadcast one; each
node that acts on it answers with ``ControlAcked`` on the acks stream, where
the issuer waits for it.
"""

from __future__ import annotations

import enum
from typing import Any

from eventcore.events._base import Event

BROADCAST = "*"


class ControlKind(enum.StrEnum):
    CANCEL_TASK = "cancel_task"
    PAUSE = "pause"
    RESUME = "resume"
    DRAIN = "drain"
    SHUTDOWN = "shutdown"
    SET_CONCURRENCY = "set_concurrency"
    UPDATE_CONFIG = "update_config"
    PING = "ping"
    RELOAD_HANDLERS = "reload_handlers"


class ControlIssued(Event, frozen=True, tag="control.issued"):
    command_id: str
    target: str  # a node id, or BROADCAST
    kind: ControlKind
    args: dict[str, Any] = {}
    issued_by: str = ""


class ControlAcked(Event, frozen=True, tag="control.acked"):
    command_id: str
    node: str
    ok: bool
    detail: str = ""


ControlEvent = ControlIssued | ControlAcked

CONTROL_EVENT_TYPES: tuple[type[Event], ...] = ControlEvent.__args__  # type: ignore[attr-defined]
