"""A position in the live feed: how far a client has read every shard's feed.

The views are kept in shards, each with a feed of its own
(:meth:`eventcore.keys.Keys.feed`), so "where a client is" is one entry id
per shard. The SSE ``id`` of every event is that position after the event,
written compactly (``ms`` and ``seq`` in base 36, ``-`` between them when
``seq`` is not 0, ``.`` between shards, in the order of
:meth:`~eventcore.keys.Keys.view_shards`, then ``.`` and a two-digit check
of the rest): about ten characters a shard, opaque to clients. ``0`` (or
``0-0``) is the start of every feed. ``Last-Event-ID`` gives it back, and the feed resumes
each shard after its part, so nothing is missed or repeated, across web
restarts too (it holds only stream ids).
"""

from __future__ import annotations

import string
import zlib

__all__ = ["Mark", "PositionError", "decode_position", "encode_position", "mark_text"]

Mark = tuple[int, int]  # an entry id as (ms, seq)

_DIGITS = string.digits + string.ascii_lowercase
_MAX = 2**64 - 1


class PositionError(ValueError):
    """A text that is not a feed position (bad characters or numbers)."""


def _b36(n: int) -> str:
    if n == 0:
        return "0"
    out = []
    while n:
        n, d = divmod(n, 36)
        out.append(_DIGITS[d])
    return "".join(reversed(out))


def _num(text: str) -> int:
    if not text or len(text) > 13 or any(c not in _DIGITS for c in text):
        raise PositionError(f"{text!r} is not a base-36 number")
    n = int(text, 36)
    if n > _MAX:
        raise PositionError(f"{text!r} is out of range")
    return n


def _check(body: str) -> str:
    return _b36(zlib.crc32(body.encode(errors="replace")) % 1296).rjust(2, "0")


def encode_position(marks: tuple[Mark, ...]) -> str:
    """The compact text of a position (one mark per shard)."""
    body = ".".join(_b36(ms) if seq == 0 else f"{_b36(ms)}-{_b36(seq)}" for ms, seq in marks)
    return f"{body}.{_check(body)}"


def decode_position(text: str) -> tuple[Mark, ...]:
    """The marks of a position's text; :class:`PositionError` when it is not one."""
    if text in ("0", "0-0"):
        return ((0, 0),)
    if not text or len(text) > 4096:
        raise PositionError("empty or too long")
    body, _, check = text.rpartition(".")
    if not body or check != _check(body):
        raise PositionError("not a position this feed gave out")
    out = []
    for part in body.split("."):
        ms, _, seq = part.partition("-")
        out.append((_num(ms), _num(seq) if seq else 0))
    return tuple(out)


def mark_text(mark: Mark) -> str:
    """A mark as a stream entry id (``"ms-seq"``)."""
    return f"{mark[0]}-{mark[1]}"
