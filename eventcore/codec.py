"""Encoding events into stream entries and back.

An event is stored as MessagePack in the entry field ``e``; entries of the
task log also carry the task id in field ``task`` so a reader can filter
without decoding. There is one reusable encoder and one decoder per stream
type (task log, node stream, control streams). Decoding is strict: an unknown
``type`` tag or a field of the wrong type raises :class:`DecodeError` naming
the stream and the entry id.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any, Generic, TypeVar

import msgspec

from eventcore.errors import DecodeError
from eventcore.events import ControlEvent, Event, NodeEvent, TaskEvent

__all__ = [
    "CONTROL",
    "EVENT_FIELD",
    "NODE",
    "TASK",
    "TASK_FIELD",
    "Codec",
    "Entry",
    "StreamKind",
    "codec_for",
    "encode",
    "text",
]

EVENT_FIELD = b"e"
TASK_FIELD = b"task"

E = TypeVar("E", bound=Event)

_encoder = msgspec.msgpack.Encoder()


def encode(event: Event) -> bytes:
    """MessagePack bytes of any event (the tag is included)."""
    return _encoder.encode(event)


def text(value: bytes | str) -> str:
    """A Redis reply value (an id, a name, a script's reply) as ``str``.
    redis-py returns bytes, as eventcore's clients do not set
    ``decode_responses``; a value that is ``str`` already is kept."""
    return value.decode() if isinstance(value, bytes) else str(value)


class StreamKind(enum.StrEnum):
    TASK = "task"
    NODE = "node"
    CONTROL = "control"


class Entry(msgspec.Struct, Generic[E], frozen=True):
    """One decoded stream entry."""

    stream: str
    id: str
    event: E


class Codec(Generic[E]):
    """The decoder for one stream type, with errors that name the entry."""

    def __init__(self, kind: StreamKind, union: Any) -> None:
        self.kind = kind
        self._decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(union)

    def decode(self, data: bytes, *, stream: str = "?", entry_id: str = "?") -> E:
        try:
            return self._decoder.decode(data)
        except msgspec.DecodeError as exc:
            raise DecodeError(stream, entry_id, str(exc)) from exc

    def decode_fields(
        self, stream: str, entry_id: bytes | str, fields: Mapping[bytes, bytes]
    ) -> Entry[E]:
        """Decode a raw entry as redis-py returns it (``{b"e": ..., ...}``)."""
        eid = text(entry_id)
        data = fields.get(EVENT_FIELD)
        if data is None:
            raise DecodeError(stream, eid, f"no {EVENT_FIELD.decode()!r} field")
        return Entry(stream, eid, self.decode(data, stream=stream, entry_id=eid))


TASK: Codec[Any] = Codec(StreamKind.TASK, TaskEvent)
NODE: Codec[Any] = Codec(StreamKind.NODE, NodeEvent)
CONTROL: Codec[Any] = Codec(StreamKind.CONTROL, ControlEvent)

_BY_KIND = {StreamKind.TASK: TASK, StreamKind.NODE: NODE, StreamKind.CONTROL: CONTROL}


def codec_for(kind: StreamKind) -> Codec[Any]:
    return _BY_KIND[kind]
