"""arq: one worker, its defaults: max_jobs=10, poll_delay=0.5 s.

arq polls (no blocking read): every 0.5 s it reads at most
queue_read_limit = max(5 x max_jobs, 100) jobs, so at its defaults it cannot
pass ~200 tasks/s, and a lone task waits for the next poll. Both are arq's
behaviour as shipped; --concurrency arq=50 shows what a larger read does.

arq 0.28 pins redis<6, which the project cannot share (it needs redis>=5 and
taskiq-redis needs >=8), so it usually runs from its own venv:
bench/peers.py --python arq=/path/to/venv/bin/python.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import kit
from arq import create_pool
from arq.connections import RedisSettings

DISTS = ("arq",)
MAX_JOBS = kit.concurrency(10)
WORKER = f"asyncio, max_jobs={MAX_JOBS}; polls every 0.5 s, <= max(5 x max_jobs, 100) jobs a poll"
REDIS = RedisSettings.from_dsn(kit.url())

# arq's CLI logs two INFO lines per job; the other peers run at WARNING too.
LOG_CONFIG = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {"arq": {"handlers": ["stderr"], "level": "WARNING"}},
}


async def noop(ctx: dict[str, Any], token: str = "") -> None:
    await kit.arecord(token)


class WorkerSettings:
    functions = (noop,)
    redis_settings = REDIS
    max_jobs = MAX_JOBS


def worker_argv() -> list[str]:
    return [
        sys.executable,
        "-m",
        "arq",
        "arq_app.WorkerSettings",
        "--custom-log-dict",
        "arq_app.LOG_CONFIG",
    ]


class _Client:
    def __init__(self, pool: Any) -> None:
        self.pool = pool

    async def enqueue_many(self, n: int) -> None:
        for _ in range(n):  # no bulk enqueue in arq
            await self.pool.enqueue_job("noop")

    async def submit(self, token: str) -> None:
        await self.pool.enqueue_job("noop", token)


@asynccontextmanager
async def client() -> AsyncIterator[kit.Client]:
    pool = await create_pool(REDIS)
    try:
        yield _Client(pool)
    finally:
        await pool.aclose()
