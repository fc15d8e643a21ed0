"""A small event log as schema v1 wrote it, and the views it folds to.

``log_v1.jsonl`` (entries) and ``views_v1.json`` (the views) are committed.
The test replays the log and compares with the committed views: a change to
a fold that changes a view must be deliberate (regenerate with
``python -m tests.golden.log_v1 --write`` and review the diff).
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import msgspec

from eventcore.codec import encode
from eventcore.events import (
    Capabilities,
    ErrorInfo,
    NodeHeartbeat,
    NodeStarted,
    RetryPolicy,
    TaskCancelled,
    TaskCancelRequested,
    TaskClaimed,
    TaskDeadLettered,
    TaskFailed,
    TaskProgress,
    TaskResultStale,
    TaskRetryScheduled,
    TaskSpec,
    TaskStarted,
    TaskSubmitted,
    TaskSucceeded,
)

HERE = Path(__file__).parent
LOG = HERE / "log_v1.jsonl"
VIEWS = HERE / "views_v1.json"
P0, NODES = "ec:{p0}:events", "ec:nodes"
T0 = 1_720_000_000.0
A, B, C, D = (f"0190a8a0-0000-7000-8000-00000000000{i}" for i in range(1, 5))


def entries() -> list[tuple[str, str, object]]:
    spec = TaskSpec(kind="noop", queue="cpu-light", params={"x": 1})
    events = [
        (
            NODES,
            NodeStarted(
                at=T0,
                node="n1",
                capabilities=Capabilities(cpu_cores=2, memory_mb=4096),
                queues=("cpu-light",),
            ),
        ),
        (P0, TaskSubmitted(at=T0 + 1, task_id=A, spec=spec)),
        (P0, TaskSubmitted(at=T0 + 1, task_id=B, spec=spec, idempotency_key="k")),
        (
            P0,
            TaskSubmitted(
                at=T0 + 2,
                task_id=C,
                spec=TaskSpec(kind="fail", queue="cpu-light", retry=RetryPolicy(max_retries=1)),
            ),
        ),
        (P0, TaskSubmitted(at=T0 + 2, task_id=D, spec=spec)),
        (P0, TaskClaimed(at=T0 + 3, task_id=A, node="n1", attempt=1, deliveries=1, entry_id="1-0")),
        (P0, TaskStarted(at=T0 + 3, task_id=A, node="n1", attempt=1, pid=10)),
        (P0, TaskProgress(at=T0 + 3.5, task_id=A, attempt=1, progress=0.5, message="half")),
        (NODES, NodeHeartbeat(at=T0 + 4, node="n1", running=(A,), free_slots=1, load=0.5)),
        (
            P0,
            TaskSucceeded(
                at=T0 + 4.25, task_id=A, node="n1", attempt=1, result={"x": 1}, duration=1.25
            ),
        ),
        (P0, TaskClaimed(at=T0 + 5, task_id=C, node="n1", attempt=1, deliveries=1, entry_id="2-0")),
        (P0, TaskStarted(at=T0 + 5, task_id=C, node="n1", attempt=1)),
        (
            P0,
            TaskRetryScheduled(
                at=T0 + 5.1,
                task_id=C,
                attempt=2,
                run_at=T0 + 6,
                delay=0.9,
                error=ErrorInfo(type="TaskError", message="boom"),
            ),
        ),
        (P0, TaskClaimed(at=T0 + 6, task_id=C, node="n1", attempt=2, deliveries=1, entry_id="3-0")),
        (P0, TaskStarted(at=T0 + 6, task_id=C, node="n1", attempt=2)),
        (
            P0,
            TaskFailed(
                at=T0 + 6.5,
                task_id=C,
                node="n1",
                attempt=2,
                error=ErrorInfo(type="TaskError", message="boom"),
            ),
        ),
        (P0, TaskCancelRequested(at=T0 + 7, task_id=B, reason="user")),
        (P0, TaskCancelled(at=T0 + 7.5, task_id=B, node="n1", reason="cancelled before it ran")),
        (P0, TaskDeadLettered(at=T0 + 8, task_id=D, deliveries=6, reason="delivered 6 times")),
        (
            P0,
            TaskResultStale(
                at=T0 + 9,
                task_id=A,
                node="n2",
                attempt=1,
                outcome="task.succeeded",
                reason="lease lost to n1",
            ),
        ),
    ]
    out, seq = [], {}
    for stream, event in events:
        ms = int(event.at * 1000)
        n = seq.get((stream, ms), 0)
        seq[(stream, ms)] = n + 1
        out.append((stream, f"{ms}-{n}", event))
    return out


def views_json(views: object) -> object:
    data = msgspec.to_builtins(msgspec.structs.replace(views, stats_by={}))  # type: ignore[type-var]
    data["stats_by"] = {
        "\x1f".join(k): msgspec.to_builtins(v)
        for k, v in views.stats_by.items()  # type: ignore[attr-defined]
    }
    return json.loads(json.dumps(data, sort_keys=True))


if __name__ == "__main__":
    if "--write" not in sys.argv:
        sys.exit("this rewrites the golden log and views; pass --write")
    from projections.replay import replay

    rows = [
        {"stream": s, "id": i, "e": base64.b64encode(encode(e)).decode()} for s, i, e in entries()
    ]
    LOG.write_text("".join(json.dumps(r) + "\n" for r in rows))
    VIEWS.write_text(json.dumps(views_json(replay(entries())), indent=1, sort_keys=True) + "\n")
