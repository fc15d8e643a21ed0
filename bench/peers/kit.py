"""What every peer's task and client share: the keys, the Redis clients, the task body.

Imported by the per-library modules (``<lib>_app.py``) in two kinds of process:
the harness (client side) and the library's worker. Both find the server in
``$BENCH_REDIS_URL``. Only redis-py and the standard library are used here, so
this runs in any venv that has a peer installed (arq has its own, see
bench/peers.py).

The task body is the same for every peer: one Redis command. A throughput task
INCRs one counter (the harness polls it); a latency task LPUSHes to a key of its
own (the harness BLPOPs it). Keys are built only here.
"""

from __future__ import annotations

import asyncio
import os
from contextlib import AbstractAsyncContextManager
from typing import Protocol

import redis
import redis.asyncio

URL_ENV = "BENCH_REDIS_URL"
CONCURRENCY_ENV = "BENCH_CONCURRENCY"


def url() -> str:
    """The server every peer uses, set by the harness for itself and its workers."""
    return os.environ[URL_ENV]


def counter_key() -> str:
    """INCRed once by every throughput task."""
    return "bench:count"


def done_key(token: str) -> str:
    """LPUSHed by the latency task carrying ``token``."""
    return f"bench:done:{token}"


def concurrency(default: int) -> int:
    """Worker concurrency: ``$BENCH_CONCURRENCY`` (peers.py --concurrency) or ``default``."""
    return int(os.environ.get(CONCURRENCY_ENV) or default)


_sync_client: redis.Redis | None = None
_async_clients: dict[asyncio.AbstractEventLoop, redis.asyncio.Redis] = {}


def sync_client() -> redis.Redis:
    """One client per process, made on first use: after any fork, so prefork pools get their own.

    redis-py's pool is thread-safe, so threaded workers share it.
    """
    global _sync_client
    if _sync_client is None:
        _sync_client = redis.Redis.from_url(url())
    return _sync_client


def async_client() -> redis.asyncio.Redis:
    """One client per event loop: an asyncio connection belongs to the loop that opened it."""
    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None:
        client = _async_clients[loop] = redis.asyncio.Redis.from_url(url())
    return client


def record(token: str) -> None:
    """The task body for sync libraries: INCR the counter, or LPUSH ``token``'s key."""
    if token:
        sync_client().lpush(done_key(token), 1)
    else:
        sync_client().incr(counter_key())


async def arecord(token: str) -> None:
    """The task body for asyncio libraries."""
    if token:
        await async_client().lpush(done_key(token), 1)
    else:
        await async_client().incr(counter_key())


class Client(Protocol):
    """What the harness needs from a peer's producer side."""

    async def enqueue_many(self, n: int) -> None:
        """Enqueue ``n`` counter tasks, with the library's bulk API where it has one."""
        ...

    async def submit(self, token: str) -> None:
        """Enqueue one latency task that pushes to ``done_key(token)``."""
        ...


class PeerModule(Protocol):
    """The module attributes the harness reads from each ``<lib>_app.py``."""

    DISTS: tuple[str, ...]  # distributions whose versions are reported
    WORKER: str  # how the worker runs, for the notes column

    def worker_argv(self) -> list[str]: ...

    def client(self) -> AbstractAsyncContextManager[Client]: ...
