"""What the event log's writes take and answer: typed structs for the
arguments and replies of its script calls (see :class:`eventcore.log.EventLog`).

Kept apart from the log so callers can name them without the client, and
re-exported from :mod:`eventcore.log`.
"""

from __future__ import annotations

import enum

import msgspec

from eventcore.events import Event, TaskRerouted, TaskSpec
from eventcore.log.groups import WorkEntry

__all__ = [
    "CancelOutcome",
    "CancelResult",
    "HeldAppend",
    "Reroute",
    "RerouteResult",
    "SettleResult",
    "Settlement",
    "Submission",
    "SubmitResult",
]


class Submission(msgspec.Struct, frozen=True, kw_only=True):
    """One task to submit. ``run_at`` (seconds since the epoch) delays it;
    ``task_id`` may be given to choose the id (it must be a UUIDv7)."""

    spec: TaskSpec
    idempotency_key: str | None = None
    run_at: float | None = None
    task_id: str | None = None
    routed: bool = False  # the router chose spec.queue (see TaskSubmitted.routed)


class SubmitResult(msgspec.Struct, frozen=True):
    task_id: str
    event_id: str  # the TaskSubmitted entry id; "" when the idempotency key existed
    created: bool


class Settlement(msgspec.Struct, frozen=True):
    """How a held work entry ends: the events to append, last one deciding.

    The last event is a terminal one (succeeded, failed, cancelled, timed out),
    a ``TaskRetryScheduled`` (back to the delayed set) or a ``TaskDeadLettered``
    (parked in the dead-letter stream). Earlier events (claimed, started,
    progress) may ride along in the same write.
    """

    entry: WorkEntry
    events: tuple[Event, ...]


class SettleResult(msgspec.Struct, frozen=True):
    ok: bool
    event_id: str = ""  # id of the last event written
    stale_reason: str = ""  # why nothing was written, when not ok


class HeldAppend(msgspec.Struct, frozen=True):
    """What :meth:`EventLog.append_held` did: the ids written, or why nothing was."""

    written: bool
    event_ids: tuple[str, ...] = ()
    not_held: str = ""  # why nothing was written, when not written


class Reroute(msgspec.Struct, frozen=True):
    """Move one waiting work entry to ``to_stream`` (same partition), recording
    ``event``. ``spec`` is the new entry's encoded ``TaskSubmitted`` (its
    ``spec.queue`` naming the new queue)."""

    stream: str
    entry_id: str
    to_stream: str
    event: TaskRerouted
    spec: bytes


class RerouteResult(msgspec.Struct, frozen=True):
    ok: bool
    event_id: str = ""
    entry_id: str = ""  # the new work entry's id
    why: str = ""  # why nothing was written, when not ok


class CancelOutcome(enum.StrEnum):
    REQUESTED = "requested"  # the worker that claims or runs it will see it
    CANCELLED = "cancelled"  # it was waiting in the delayed set: cancelled now
    ALREADY_DONE = "done"  # it had already ended; nothing written


class CancelResult(msgspec.Struct, frozen=True):
    outcome: CancelOutcome
    event_id: str = ""
    ended_as: str = ""  # for ALREADY_DONE: the terminal event type
