"""Celery on the Redis broker: prefork pool, one process per core, prefetch x64.

Celery's "Optimizing" guide: for many short tasks where throughput matters,
raise worker_prefetch_multiplier to 64 or 128 (default 4). Prefork with
concurrency = cores is the default pool. No result backend: the task's own
INCR/LPUSH tells the harness it ran.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import kit
from celery import Celery

DISTS = ("celery", "kombu")
CONCURRENCY = kit.concurrency(os.cpu_count() or 2)
PREFETCH = 64
WORKER = f"prefork, {CONCURRENCY} processes, prefetch x{PREFETCH}"

app = Celery("bench", broker=kit.url(), set_as_current=True)
app.conf.update(
    task_ignore_result=True,
    worker_prefetch_multiplier=PREFETCH,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="noop")
def noop(token: str = "") -> None:
    kit.record(token)


def worker_argv() -> list[str]:
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "celery_app",
        "worker",
        "--pool",
        "prefork",
        "--concurrency",
        str(CONCURRENCY),
        "--loglevel",
        "WARNING",
    ]


class _Client:
    async def enqueue_many(self, n: int) -> None:
        # Celery has no bulk publish (a group publishes one message per task);
        # one producer for the whole loop is what group does.
        with app.producer_or_acquire() as producer:
            for _ in range(n):
                noop.apply_async(producer=producer)

    async def submit(self, token: str) -> None:
        noop.apply_async((token,))


@asynccontextmanager
async def client() -> AsyncIterator[kit.Client]:
    yield _Client()
