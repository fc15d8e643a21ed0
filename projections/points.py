"""Points in the log: stream entry ids, times, and the ``--at`` / ``--since`` /
``--until`` values people type.

A stream id is ``<ms>-<seq>``: the milliseconds since the epoch at which Redis
wrote the entry, then a sequence within that millisecond. All streams of one
Redis share that clock, so one id (or one time) is a cut across every stream:
"as of 12:00" is every entry with an id up to ``<ms of 12:00>-<max seq>``.
"""

from __future__ import annotations

import datetime as dt
import math
import re

import msgspec

from eventcore.errors import EventcoreError
from eventcore.ids import parse_stream_id, stream_id_key
from eventcore.keys import Keys

__all__ = [
    "MAX_SEQ",
    "Point",
    "id_lt",
    "log_streams",
    "parse_point",
]

MAX_SEQ = 2**64 - 1
# What reads as an entry id (then parsed strictly by eventcore.ids): "1_000-0"
# and other scripts' digits are refused there, not taken as a time.
_ID_LIKE = re.compile(r"^\w+-\w+$")
# Seconds since the epoch above this (the year 5138) are almost surely
# milliseconds typed by mistake.
_MAX_SECONDS = 1e11


def id_lt(a: str, b: str) -> bool:
    """Whether stream id ``a`` comes before ``b``."""
    return stream_id_key(a) < stream_id_key(b)


def log_streams(keys: Keys) -> list[str]:
    """The streams the views are folded from: every partition's task log, then
    the node stream."""
    return [*(keys.events(p) for p in keys.all_partitions()), keys.nodes()]


class Point(msgspec.Struct, frozen=True):
    """A point in the log given by a person: an entry id, or a time in ms."""

    text: str
    entry_id: str | None = None
    ms: int | None = None

    @property
    def end_id(self) -> str:
        """The last id at or before this point (for XRANGE's end, inclusive)."""
        return self.entry_id or f"{self.ms}-{MAX_SEQ}"

    @property
    def start_id(self) -> str:
        """The first id at or after this point (for XRANGE's start, inclusive)."""
        return self.entry_id or f"{self.ms}-0"

    def describe(self) -> str:
        """The point for a message: the id, or the time in UTC."""
        if self.entry_id is not None:
            return self.entry_id
        assert self.ms is not None
        when = dt.datetime.fromtimestamp(self.ms / 1000, dt.UTC)
        return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_point(text: str, option: str = "--at") -> Point:
    """Read a point: a stream id (``1714564800000-0``), seconds since the epoch
    (``1714564800``, ``1714564800.25``) or an ISO-8601 time
    (``2024-05-01T12:00:00Z``; a time without an offset is UTC, like every
    time in the log). Anything else raises an error naming ``option`` and the value."""
    value = text.strip()
    if _ID_LIKE.match(value):
        try:
            ms, seq = parse_stream_id(value)
        except ValueError as exc:
            raise _bad(text, option, str(exc)) from None
        return Point(text, entry_id=f"{ms}-{seq}")
    try:
        seconds = float(value)
    except ValueError:
        seconds = None
    if seconds is not None:
        if not math.isfinite(seconds) or seconds < 0:
            raise _bad(text, option, "seconds since the epoch must be a finite number >= 0")
        if seconds > _MAX_SECONDS:
            raise _bad(
                text,
                option,
                f"that is the year {int(seconds // 31_556_952 + 1970)}; for milliseconds "
                f"give a stream id ({int(seconds)}-0) or divide by 1000",
            )
        return Point(text, ms=int(seconds * 1000))
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise _bad(text, option, "not a time or an entry id") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return Point(text, ms=int(when.timestamp() * 1000))


def _bad(text: str, option: str, why: str) -> EventcoreError:
    return EventcoreError(
        f"bad {option} value {text!r}: {why}; give an ISO-8601 time "
        "(2024-05-01T12:00:00Z, UTC when no offset), seconds since the epoch, "
        "or a stream entry id (1714564800000-0)"
    )
