"""One event of every type as schema v1 wrote it: the source of ``events_v1.jsonl``.

The JSONL file is committed and never regenerated once released: it proves
that events written by v1 still decode. To add a new event type, append a line
for it (``python -m tests.golden.catalog_v1 --append-missing``), never rewrite
old lines.
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
    ControlAcked,
    ControlIssued,
    ControlKind,
    ErrorInfo,
    GpuInfo,
    NodeDraining,
    NodeHeartbeat,
    NodeLost,
    NodePaused,
    NodeResumed,
    NodeStarted,
    NodeStopped,
    Priority,
    RetryPolicy,
    TaskCancelled,
    TaskCancelRequested,
    TaskClaimed,
    TaskDeadLettered,
    TaskFailed,
    TaskProgress,
    TaskRerouted,
    TaskResultStale,
    TaskRetryScheduled,
    TaskScheduled,
    TaskSpec,
    TaskStarted,
    TaskSubmitted,
    TaskSucceeded,
    TaskTimedOut,
)

PATH = Path(__file__).with_name("events_v1.jsonl")
T = "0190a8a0-0000-7000-8000-000000000001"
AT = 1_720_000_000.25

CATALOG = [
    TaskSubmitted(
        at=AT,
        task_id=T,
        spec=TaskSpec(
            kind="inpaint",
            queue="gpu-high",
            priority=Priority.HIGH,
            params={"image": "blob:ab12", "cv2_radius": 4},
            tenant="acme",
            model="lama",
            retry=RetryPolicy(max_retries=2, delay=0.5, retry_on=("IOError",)),
            soft_timeout=10.0,
            hard_timeout=30.0,
            max_deliveries=3,
        ),
        idempotency_key="req-1",
    ),
    TaskScheduled(at=AT, task_id=T, run_at=AT + 60),
    TaskClaimed(at=AT, task_id=T, node="gpu-1", attempt=1, deliveries=1, entry_id="1-0"),
    TaskStarted(at=AT, task_id=T, node="gpu-1", attempt=1, pid=4242),
    TaskProgress(at=AT, task_id=T, attempt=1, progress=0.5, message="forward", warning=None),
    TaskCancelRequested(at=AT, task_id=T, reason="user", by="alice"),
    TaskSucceeded(
        at=AT,
        task_id=T,
        node="gpu-1",
        attempt=1,
        result={"w": 512},
        result_ref="blob:cd34",
        duration=1.5,
    ),
    TaskFailed(
        at=AT,
        task_id=T,
        node="gpu-1",
        attempt=1,
        error=ErrorInfo(
            type="ValueError", message="bad", traceback="Traceback...", retryable=False
        ),
    ),
    TaskCancelled(at=AT, task_id=T, node="gpu-1", reason="user"),
    TaskTimedOut(at=AT, task_id=T, node="gpu-1", attempt=1, timeout=30.0),
    TaskRetryScheduled(
        at=AT,
        task_id=T,
        attempt=2,
        run_at=AT + 2,
        delay=2.0,
        error=ErrorInfo(type="IOError", message="flaky"),
    ),
    TaskDeadLettered(
        at=AT, task_id=T, deliveries=5, reason="delivered 5 times", entry_id="1-0", node="gpu-1"
    ),
    TaskResultStale(
        at=AT,
        task_id=T,
        node="gpu-2",
        attempt=1,
        outcome="task.succeeded",
        reason="lease lost to gpu-1",
    ),
    NodeStarted(
        at=AT,
        node="gpu-1",
        capabilities=Capabilities(
            cpu_cores=8,
            memory_mb=32000,
            gpus=(GpuInfo(index=0, name="A10", memory_mb=24000),),
            handlers=("inpaint",),
            models=("lama",),
        ),
        queues=("gpu-high",),
        concurrency=2,
        host="h1",
        pid=7,
        version="0.1.0",
    ),
    NodeHeartbeat(
        at=AT,
        node="gpu-1",
        running=(T,),
        free_slots=1,
        load=0.5,
        memory_free_mb=1000,
        gpu_memory_free_mb=(2000,),
        warm_models=("lama",),
    ),
    NodePaused(at=AT, node="gpu-1", by="admin"),
    NodeResumed(at=AT, node="gpu-1", by="admin"),
    NodeDraining(at=AT, node="gpu-1", reason="SIGTERM"),
    NodeStopped(at=AT, node="gpu-1", reason="drained"),
    NodeLost(at=AT, node="gpu-1", last_seen=AT - 30, noticed_by="cpu-1"),
    ControlIssued(
        at=AT,
        command_id="c1",
        target="gpu-1",
        kind=ControlKind.SET_CONCURRENCY,
        args={"n": 4},
        issued_by="admin",
    ),
    ControlAcked(at=AT, command_id="c1", node="gpu-1", ok=True, detail="concurrency 4"),
    TaskRerouted(
        at=AT,
        task_id=T,
        from_queue="gpu-high",
        to_queue="cpu-light",
        reason="no live node reads gpu-high; a live node reads cpu-light",
        by="cpu-1",
    ),
]


# Events of v1 types carrying fields added since v1 (with defaults, so old
# events still decode and the schema version stays 1), one line each in
# ``events_v1_fields.jsonl``: proof that the new fields round-trip too. Append
# with ``--append-fields``; never rewrite old lines.
FIELDS_PATH = Path(__file__).with_name("events_v1_fields.jsonl")
ADDED_FIELDS = [
    TaskProgress(
        at=AT, task_id=T, attempt=1, progress=0.25, message="tile 1/4", node="gpu-1", delivery=2
    ),
]


def line_for(event: msgspec.Struct) -> str:
    return json.dumps(
        {
            "type": type(event).type_name(),
            "msgpack_b64": base64.b64encode(encode(event)).decode(),
            "decoded": msgspec.to_builtins(event),
        },
        sort_keys=True,
    )


def _append_fields() -> None:
    have = set()
    if FIELDS_PATH.exists():
        have = {x for x in FIELDS_PATH.read_text().splitlines() if x}
    with FIELDS_PATH.open("a") as f:
        for event in ADDED_FIELDS:
            line = line_for(event)
            if line not in have:
                f.write(line + "\n")


if __name__ == "__main__" and "--append-fields" in sys.argv:
    _append_fields()
elif __name__ == "__main__":
    have = set()
    if PATH.exists():
        have = {json.loads(x)["type"] for x in PATH.read_text().splitlines() if x}
    if "--append-missing" not in sys.argv:
        sys.exit("refusing to rewrite the golden file; use --append-missing")
    with PATH.open("a") as f:
        for event in CATALOG:
            if type(event).type_name() not in have:
                f.write(line_for(event) + "\n")
