"""Schema evolution: events written by every released schema version still decode."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import msgspec
import pytest

from eventcore.codec import CONTROL, NODE, TASK
from eventcore.events import ALL_EVENT_TYPES

GOLDEN = sorted(Path(__file__).parent.joinpath("golden").glob("events_v*.jsonl"))
LINES = [json.loads(line) for path in GOLDEN for line in path.read_text().splitlines() if line]


def test_golden_files_cover_every_event_type() -> None:
    assert {line["type"] for line in LINES} >= {cls.type_name() for cls in ALL_EVENT_TYPES}


@pytest.mark.parametrize("line", LINES, ids=[line["type"] for line in LINES])
def test_golden_event_decodes_to_committed_value(line: dict) -> None:
    codec = {"task": TASK, "node": NODE, "control": CONTROL}[line["type"].split(".")[0]]
    event = codec.decode(base64.b64decode(line["msgpack_b64"]))
    assert type(event).type_name() == line["type"]
    now = json.loads(msgspec.json.encode(event))
    committed = line["decoded"]
    assert {k: v for k, v in now.items() if k in committed} == committed
    # A field added since the line was written decodes to its default.
    defaults = {
        f.encode_name: json.loads(msgspec.json.encode(f.default))
        for f in msgspec.structs.fields(type(event))
        if f.default is not msgspec.NODEFAULT
    }
    for key in now.keys() - committed.keys():
        assert key in defaults and now[key] == defaults[key], key
