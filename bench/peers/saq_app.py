"""saq: one worker process (`saq --workers 1`), its default concurrency=10."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import kit
from saq import Queue

DISTS = ("saq",)
CONCURRENCY = kit.concurrency(10)
WORKER = f"asyncio, concurrency={CONCURRENCY}"

queue = Queue.from_url(kit.url(), name="bench")


async def noop(ctx: dict[str, Any], *, token: str = "") -> None:
    await kit.arecord(token)


settings = {"queue": queue, "functions": [noop], "concurrency": CONCURRENCY}


def worker_argv() -> list[str]:
    # --verbose 0 (the default) logs at ERROR only.
    return [sys.executable, "-m", "saq", "saq_app.settings", "--workers", "1"]


class _Client:
    async def enqueue_many(self, n: int) -> None:
        for _ in range(n):  # no bulk enqueue in saq (map/batch wait for results)
            await queue.enqueue("noop")

    async def submit(self, token: str) -> None:
        await queue.enqueue("noop", token=token)


@asynccontextmanager
async def client() -> AsyncIterator[kit.Client]:
    await queue.connect()
    try:
        yield _Client()
    finally:
        await queue.disconnect()
