"""Golden log: a committed v1 event log replays to the committed views."""

from __future__ import annotations

import base64
import json

from eventcore.codec import StreamKind, codec_for
from projections.replay import replay
from tests.golden.log_v1 import LOG, VIEWS, views_json


def test_committed_log_replays_to_committed_views() -> None:
    entries = []
    for line in LOG.read_text().splitlines():
        row = json.loads(line)
        kind = StreamKind.NODE if row["stream"].endswith("nodes") else StreamKind.TASK
        data = base64.b64decode(row["e"])
        event = codec_for(kind).decode(data, stream=row["stream"], entry_id=row["id"])
        entries.append((row["stream"], row["id"], event))
    assert views_json(replay(entries)) == json.loads(VIEWS.read_text())
