"""taskiq with taskiq-redis's RedisStreamBroker (its README's default broker).

One worker process (`taskiq worker --workers 1`; the default is 2), its
default --max-async-tasks 100.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import kit
from taskiq_redis import RedisStreamBroker

DISTS = ("taskiq", "taskiq-redis")
# On SIGTERM the worker child logs "Stopping prefetching messages..." and then
# never exits (taskiq-python/taskiq#646, open), so the harness's graceful wait
# would always run out: keep it short. The clock stopped before this.
STOP_TIMEOUT = 3.0
MAX_ASYNC = kit.concurrency(100)
WORKER = f"RedisStreamBroker, asyncio, max-async-tasks={MAX_ASYNC}"

broker = RedisStreamBroker(url=kit.url(), queue_name="bench")


@broker.task(task_name="noop")
async def noop(token: str = "") -> None:
    await kit.arecord(token)


def worker_argv() -> list[str]:
    return [
        sys.executable,
        "-m",
        "taskiq",
        "worker",
        "taskiq_app:broker",
        "--workers",
        "1",
        "--max-async-tasks",
        str(MAX_ASYNC),
        "--log-level",
        "WARNING",
    ]


class _Client:
    async def enqueue_many(self, n: int) -> None:
        for _ in range(n):  # no bulk kick in taskiq
            await noop.kiq()

    async def submit(self, token: str) -> None:
        await noop.kiq(token)


@asynccontextmanager
async def client() -> AsyncIterator[kit.Client]:
    # startup() creates the consumer group at "$" (XGROUP CREATE ... MKSTREAM):
    # it must happen before the tasks are added, or a worker started afterwards
    # never sees them.
    await broker.startup()
    try:
        yield _Client()
    finally:
        await broker.shutdown()
