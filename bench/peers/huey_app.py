"""huey (RedisHuey, blocking dequeue): one consumer, one worker thread per core.

huey's consumer defaults to one thread; its docs say to raise --workers for
throughput without naming a number. On no-op tasks and 2 cores, 1/2/4/8
threads gave about 2,300/3,900/3,600/2,800 tasks/s (more threads only fight
over the GIL), so: one per core.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import kit
from huey import RedisHuey

DISTS = ("huey",)
THREADS = kit.concurrency(os.cpu_count() or 2)
WORKER = f"thread workers, {THREADS} threads"

huey = RedisHuey("bench", url=kit.url())


@huey.task(name="noop")
def noop(token: str = "") -> None:
    kit.record(token)


def worker_argv() -> list[str]:
    return [
        sys.executable,
        "-m",
        "huey.bin.huey_consumer",
        "huey_app.huey",
        "--worker-type",
        "thread",
        "--workers",
        str(THREADS),
        "--quiet",
    ]


class _Client:
    async def enqueue_many(self, n: int) -> None:
        noop.map([()] * n)  # map() is huey's bulk call (one enqueue per item)

    async def submit(self, token: str) -> None:
        noop(token)


@asynccontextmanager
async def client() -> AsyncIterator[kit.Client]:
    yield _Client()
