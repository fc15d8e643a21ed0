"""Encoding and strict decoding of every event type."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given

from eventcore.codec import CONTROL, NODE, TASK, encode
from eventcore.errors import DecodeError
from eventcore.events import (
    ALL_EVENT_TYPES,
    CONTROL_EVENT_TYPES,
    NODE_EVENT_TYPES,
    TASK_EVENT_TYPES,
    Event,
    NodeHeartbeat,
    TaskSpec,
    TaskSubmitted,
)
from tests.strategies import events


def _codec_for(event: Event):
    if isinstance(event, TASK_EVENT_TYPES):
        return TASK
    if isinstance(event, NODE_EVENT_TYPES):
        return NODE
    return CONTROL


@given(events)
def test_round_trip_every_event(event: Event) -> None:
    assert _codec_for(event).decode(encode(event)) == event


def test_every_event_type_has_a_unique_tag() -> None:
    tags = [cls.type_name() for cls in ALL_EVENT_TYPES]
    assert (
        len(tags)
        == len(set(tags))
        == len(TASK_EVENT_TYPES + NODE_EVENT_TYPES + CONTROL_EVENT_TYPES)
    )


def test_unknown_tag_names_stream_and_entry() -> None:
    data = msgspec.msgpack.encode({"type": "task.exploded", "task_id": "x", "v": 1, "at": 0.0})
    with pytest.raises(DecodeError) as err:
        TASK.decode(data, stream="ec:{p0}:events", entry_id="1-0")
    assert "ec:{p0}:events" in str(err.value) and "1-0" in str(err.value)
    assert "task.exploded" in str(err.value)


def test_wrong_field_type_is_an_error_not_a_default() -> None:
    good = msgspec.msgpack.decode(encode(NodeHeartbeat(node="n", free_slots=2)))
    good["free_slots"] = "two"
    with pytest.raises(DecodeError, match="free_slots"):
        NODE.decode(msgspec.msgpack.encode(good), stream="ec:nodes", entry_id="5-1")


def test_event_of_another_stream_is_refused() -> None:
    with pytest.raises(DecodeError):
        TASK.decode(encode(NodeHeartbeat(node="n")))


def test_garbage_bytes_and_missing_field() -> None:
    with pytest.raises(DecodeError, match="9-9"):
        TASK.decode(b"\xc1\xff", stream="s", entry_id="9-9")
    with pytest.raises(DecodeError, match="no 'e' field"):
        TASK.decode_fields("s", b"1-1", {b"task": b"x"})


def test_decode_fields_gives_entry() -> None:
    ev = TaskSubmitted(task_id="t", spec=TaskSpec(kind="k", queue="q"))
    entry = TASK.decode_fields("s", b"7-0", {b"e": encode(ev), b"task": b"t"})
    assert entry.id == "7-0" and entry.stream == "s" and entry.event == ev
