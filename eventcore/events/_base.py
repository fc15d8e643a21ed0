"""What every event shares: a schema version ``v`` and the time ``at`` it was
written (seconds since the epoch, UTC). Each concrete event adds its entity id
and a tag, which is how the decoder tells the types apart."""

from __future__ import annotations

import time

import msgspec

SCHEMA_VERSION = 1


def now() -> float:
    """Current UTC time as seconds since the epoch: the ``at`` of new events."""
    return time.time()


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Base of every event. Subclasses set ``tag=...`` and never rename it."""

    v: int = SCHEMA_VERSION
    at: float = msgspec.field(default_factory=now)

    @classmethod
    def type_name(cls) -> str:
        """The tag written into the ``type`` field of this event type."""
        return cls.__struct_config__.tag  # type: ignore[return-value]
