"""Helpers for worker tests: short leases and intervals, a worker in the test's
event loop or as a real process, and waiting for a task to end."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from eventcore.config import QueueConfig, Settings, WorkerSettings
from eventcore.events import Capabilities, RetryPolicy, TaskSpec
from eventcore.log import EventLog
from tests.partitions import PARTITIONS
from workers.handlers import Registry
from workers.worker import Worker, WorkerOptions

LEASE_MS = 600


def fast_settings(namespace: str, partitions: int = PARTITIONS, **queue: Any) -> Settings:
    q = QueueConfig(
        name="q",
        lease_ms=queue.pop("lease_ms", LEASE_MS),
        max_deliveries=queue.pop("max_deliveries", 3),
        retry=queue.pop("retry", RetryPolicy(max_retries=0)),
        **queue,
    )
    return Settings(
        namespace=namespace,
        partitions=partitions,
        queues=(q,),
        worker=WorkerSettings(
            heartbeat_interval=0.2,
            heartbeat_timeout=1.0,
            reclaim_interval=0.2,
            release_interval=0.05,
            shutdown_grace=5.0,
        ),
    )


def spec(kind: str, **params: Any) -> TaskSpec:
    return TaskSpec(kind=kind, queue="q", params=params)


def make_worker(
    log: EventLog,
    settings: Settings,
    node: str,
    concurrency: int = 4,
    queues: Sequence[QueueConfig] | None = None,
) -> Worker:
    """A worker in the test's event loop reading ``queues`` (all of
    ``settings``' by default)."""
    options = WorkerOptions(
        node=node,
        queues=tuple(settings.queues if queues is None else queues),
        concurrency=concurrency,
        capabilities=Capabilities(cpu_cores=2, memory_mb=1024),
        cancel_grace=0.5,
        block_ms=200,
    )
    return Worker(log, settings, options, Registry())


@contextlib.asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[Worker]:
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        worker.stop_now()
        await asyncio.wait_for(task, 15)


async def wait_until(
    fact: Callable[[], bool | Awaitable[bool]],
    timeout: float = 10.0,
    what: str = "the awaited fact",
    interval: float = 0.02,
) -> None:
    """Wait until ``fact()`` (a function, or a coroutine function) is true,
    polling every ``interval`` seconds; fail after ``timeout`` seconds. Tests
    wait on a fact this way, never on a fixed sleep, which flakes on a loaded
    machine."""
    deadline = time.monotonic() + timeout
    while True:
        value = fact()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        await asyncio.sleep(interval)


async def wait_ended(log: EventLog, task_id: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (ended := await log.ended_as(task_id)) is not None:
            return ended
        await asyncio.sleep(0.02)
    raise AssertionError(f"task {task_id} did not end within {timeout}s")


async def event_types(log: EventLog, task_id: str) -> list[str]:
    return [e.event.type_name() for e in await log.history(task_id)]


def spawn_worker(
    redis_url: str,
    namespace: str,
    node: str,
    extra: Sequence[str] = (),
    env: dict | None = None,
    partitions: int = 1,
    stderr: Any = subprocess.PIPE,
    prefix: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    """A real worker process on queue q with short leases. Its log goes to
    ``stderr`` (a pipe by default: a test that lets it log for long should
    pass a file, or the pipe fills and the worker blocks). ``prefix`` runs it
    through another command, e.g. ``ip netns exec NS`` (which execs it, so
    the pid is still the worker's)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTCORE_")}
    full_env.update(
        {
            "REDIS_URL": redis_url,
            "EVENTCORE_NAMESPACE": namespace,
            "EVENTCORE_PARTITIONS": str(partitions),
            "EVENTCORE_QUEUES": (
                f'[{{"name": "q", "lease_ms": {LEASE_MS}, "max_deliveries": 3, '
                '"retry": {"max_retries": 0}}]'
            ),
            "EVENTCORE_WORKER__RECLAIM_INTERVAL": "0.2",
            "EVENTCORE_WORKER__HEARTBEAT_INTERVAL": "0.2",
            "EVENTCORE_WORKER__HEARTBEAT_TIMEOUT": "1.0",
            "EVENTCORE_WORKER__SHUTDOWN_GRACE": "10",
            **(env or {}),
        }
    )
    return subprocess.Popen(
        [
            *prefix,
            sys.executable,
            "-m",
            "eventcore.cli",
            "worker",
            "--node",
            node,
            "--concurrency",
            "4",
            *extra,
        ],
        env=full_env,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )
