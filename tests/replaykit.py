"""Helpers for the replay-tool tests: a small log written through the real
scripts (submit, claim, settle) without running a worker, and view comparison."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec

from eventcore.events import (
    ErrorInfo,
    NodeHeartbeat,
    Priority,
    TaskClaimed,
    TaskFailed,
    TaskSpec,
    TaskStarted,
    TaskSucceeded,
)
from eventcore.log import EventLog, Submission, groups
from eventcore.log.groups import WorkEntry
from eventcore.nodes import append_node_event
from projections.replay import Views, replay
from projections.tools import log_after

NODE = "c1"


async def submit(log: EventLog, n: int, **params: Any) -> list[str]:
    subs = await log.submit_many(
        [
            Submission(spec=TaskSpec(kind="noop", queue="q", params={"i": i, **params}))
            for i in range(n)
        ]
    )
    return [s.task_id for s in subs]


async def claim(log: EventLog, count: int, consumer: str = NODE) -> list[WorkEntry]:
    streams = [log.keys.work(p, "q", Priority.NORMAL) for p in log.keys.all_partitions()]
    for stream in streams:
        await groups.ensure_group(log.redis, stream, log.group)
    return await groups.read_group(log.redis, log.group, consumer, streams, count=count)


async def finish(log: EventLog, entry: WorkEntry, *, ok: bool = True, consumer: str = NODE) -> str:
    """Claim, start and end one held entry in one settle, as an inline worker does."""
    tid, attempt = entry.task_id, entry.attempt
    claimed = TaskClaimed(
        task_id=tid, node=consumer, attempt=attempt, deliveries=1, entry_id=entry.id
    )
    started = TaskStarted(task_id=tid, node=consumer, attempt=attempt)
    end: Any = (
        TaskSucceeded(task_id=tid, node=consumer, attempt=attempt, result={"ok": True})
        if ok
        else TaskFailed(
            task_id=tid,
            node=consumer,
            attempt=attempt,
            error=ErrorInfo(type="ValueError", message="no", retryable=False),
        )
    )
    res = await log.finish(consumer, entry, claimed, started, end)
    assert res.ok, res.stale_reason
    return res.event_id


async def workload(log: EventLog, n: int = 12, *, leave: int = 2) -> list[str]:
    """``n`` tasks: all but ``leave`` of them run to an end (every fourth fails),
    with node heartbeats in between."""
    tasks = await submit(log, n)
    await append_node_event(log, NodeHeartbeat(node=NODE, free_slots=4))
    for k, entry in enumerate(await claim(log, n - leave)):
        await finish(log, entry, ok=k % 4 != 0)
    await append_node_event(log, NodeHeartbeat(node=NODE, free_slots=2))
    return tasks


async def replayed(log: EventLog) -> Views:
    """Every view, folded from the first entry of every stream."""
    return replay(await log_after(log, {}))


def encoded(views: Views) -> dict[str, Any]:
    enc = msgspec.msgpack.encode
    return {
        "tasks": {t: enc(v) for t, v in sorted(views.tasks.items())},
        "nodes": {n: enc(v) for n, v in sorted(views.nodes.items())},
        "queues": {q: enc(v) for q, v in sorted(views.queues.items())},
        "stats": enc(views.stats),
        "stats_by": {s: enc(v) for s, v in sorted(views.stats_by.items())},
    }


def assert_same(a: Views, b: Views) -> None:
    """Byte-equal views (the folds keep every dict in key order)."""
    ea, eb = encoded(a), encoded(b)
    for part in ea:
        assert ea[part] == eb[part], part


def cli(
    *args: str,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
    cwd: Path | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run ``eventcore`` as a real process (its stderr is not a terminal), with
    only the ``EVENTCORE_*`` and ``REDIS_URL`` variables given in ``env``."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTCORE_")}
    full_env.pop("REDIS_URL", None)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "eventcore.cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        input=stdin,
        cwd=cwd,
        timeout=timeout,
    )
