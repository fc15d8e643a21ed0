"""Dramatiq on its RedisBroker: one worker process with its default 8 threads.

`dramatiq` starts one process per core by default; the comparison is one
worker process, so --processes 1 and the default thread count.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import dramatiq
import kit
from dramatiq.brokers.redis import RedisBroker

DISTS = ("dramatiq",)
THREADS = kit.concurrency(8)
WORKER = f"1 process, {THREADS} threads; polls with backoff when idle"

broker = RedisBroker(url=kit.url())
dramatiq.set_broker(broker)


@dramatiq.actor(actor_name="noop", max_retries=0)
def noop(token: str = "") -> None:
    kit.record(token)


def worker_argv() -> list[str]:
    return [
        sys.executable,
        "-m",
        "dramatiq",
        "dramatiq_app",
        "--processes",
        "1",
        "--threads",
        str(THREADS),
    ]


class _Client:
    async def enqueue_many(self, n: int) -> None:
        # No bulk enqueue in dramatiq: group().run() is this same loop.
        for _ in range(n):
            noop.send()

    async def submit(self, token: str) -> None:
        noop.send(token)


@asynccontextmanager
async def client() -> AsyncIterator[kit.Client]:
    yield _Client()
