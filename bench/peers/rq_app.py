"""RQ: one SimpleWorker (runs jobs in process, one at a time).

RQ's default Worker forks a child per job. RQ's own performance notes
(docs/benchmark.md) recommend SimpleWorker for jobs that take single-digit
milliseconds, which a no-op is. RQ has no in-worker concurrency.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import kit
from redis import Redis
from rq import Queue

DISTS = ("rq",)
QUEUE = "bench"
WORKER = "SimpleWorker (no fork), 1 job at a time"
CHUNK = 1000


def noop(token: str = "") -> None:
    kit.record(token)


def worker_argv() -> list[str]:
    return [
        sys.executable,
        "-m",
        "rq.cli",
        "worker",
        "--url",
        kit.url(),
        "--worker-class",
        "rq.SimpleWorker",
        "--quiet",
        QUEUE,
    ]


class _Client:
    def __init__(self) -> None:
        self.queue = Queue(QUEUE, connection=Redis.from_url(kit.url()))

    async def enqueue_many(self, n: int) -> None:
        for start in range(0, n, CHUNK):
            self.queue.enqueue_many(
                [Queue.prepare_data(noop) for _ in range(min(CHUNK, n - start))]
            )

    async def submit(self, token: str) -> None:
        self.queue.enqueue(noop, token)


@asynccontextmanager
async def client() -> AsyncIterator[kit.Client]:
    c = _Client()
    try:
        yield c
    finally:
        c.queue.connection.close()
