"""streaq: one worker process (`streaq run`, --workers 1), its default concurrency=16.

The task is `silent`: streaq logs every task at INFO otherwise, and the other
peers run with per-task logging off.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import kit
from streaq import Worker

DISTS = ("streaq", "coredis")
CONCURRENCY = kit.concurrency(16)
WORKER = f"anyio/asyncio, concurrency={CONCURRENCY}"
CHUNK = 1000

worker = Worker(redis_url=kit.url(), concurrency=CONCURRENCY, queue_name="bench")


@worker.task(name="noop", silent=True)
async def noop(token: str = "") -> None:
    await kit.arecord(token)


def worker_argv() -> list[str]:
    return [sys.executable, "-m", "streaq", "run", "streaq_app:worker", "--workers", "1"]


class _Client:
    async def enqueue_many(self, n: int) -> None:
        for start in range(0, n, CHUNK):  # enqueue_many: one pipeline per call
            await worker.enqueue_many([noop.enqueue() for _ in range(min(CHUNK, n - start))])

    async def submit(self, token: str) -> None:
        await noop.enqueue(token)


@asynccontextmanager
async def client() -> AsyncIterator[kit.Client]:
    async with worker:
        yield _Client()
