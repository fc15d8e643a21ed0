"""Issuing control commands to nodes and waiting for their acknowledgements.

A command is a ``ControlIssued`` event on one node's control stream (or the
broadcast stream, target ``*``); each node that receives it answers with
``ControlAcked`` on the acks stream. The issuer notes the acks stream's newest
id before issuing, so no answer can slip past it.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from eventcore.events import BROADCAST, ControlAcked, ControlIssued, ControlKind
from eventcore.log import EventLog

__all__ = ["issue", "issue_and_wait", "wait_for_acks"]


async def _newest_ack_id(log: EventLog) -> str:
    newest = await log.redis.xrevrange(log.keys.control_acks(), count=1)
    return newest[0][0].decode() if newest else "0-0"


async def issue(
    log: EventLog,
    target: str,
    kind: ControlKind,
    args: dict[str, Any] | None = None,
    *,
    by: str = "",
) -> str:
    """Send a command to ``target`` (a node id, or ``*`` for every node); returns its id."""
    command_id = uuid.uuid4().hex
    await log.append(
        ControlIssued(
            command_id=command_id, target=target, kind=kind, args=args or {}, issued_by=by
        )
    )
    return command_id


async def wait_for_acks(
    log: EventLog, command_id: str, *, after: str, expect: int = 1, timeout: float = 5.0
) -> list[ControlAcked]:
    """The acks of ``command_id`` written after stream id ``after``: returns
    once ``expect`` have come, or whatever came when ``timeout`` runs out."""
    acks: list[ControlAcked] = []
    position = after
    deadline = time.monotonic() + timeout
    while len(acks) < expect:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        block = max(1, min(int(left * 1000), 1000))
        for entry in await log.tail({log.keys.control_acks(): position}, block_ms=block):
            position = entry.id
            if isinstance(entry.event, ControlAcked) and entry.event.command_id == command_id:
                acks.append(entry.event)
    return acks


async def issue_and_wait(
    log: EventLog,
    target: str,
    kind: ControlKind,
    args: dict[str, Any] | None = None,
    *,
    expect: int = 1,
    timeout: float = 5.0,
    by: str = "",
) -> list[ControlAcked]:
    """Issue a command and wait for ``expect`` acks (for a broadcast, the
    number of live nodes) or ``timeout`` seconds."""
    after = await _newest_ack_id(log)
    command_id = await issue(log, target, kind, args, by=by)
    return await wait_for_acks(log, command_id, after=after, expect=expect, timeout=timeout)


__all__ += ["BROADCAST"]
