"""The durable profile: no acknowledged submit is lost to a kill -9 of Redis.

The full size is RELIABILITY.md's: 20 rounds of submit, kill -9 and restart,
10,000 acknowledged submissions in all. ``EVENTCORE_TEST_FAULT_SIZE=quick``
runs 3 rounds, 450 submissions."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import NamedTuple

import pytest
import redis
from redis.asyncio import Redis

from eventcore.events import TaskSpec
from eventcore.keys import Keys
from eventcore.log import EventLog
from eventcore.server.embedded import EmbeddedRedis
from tests.conftest import server_binary
from tests.faultkit import fault_size

SPEC = TaskSpec(kind="noop", queue="cpu-light")


class Size(NamedTuple):
    rounds: int  # kill -9 and restart this many times
    acks: int  # acknowledged submissions over all rounds, at least


SIZE = fault_size(full=Size(20, 10_000), quick=Size(3, 450))


async def _submit_until_killed(url: str, keys: Keys, kill_after: int, pid: int) -> list[str]:
    """Submit one at a time; kill -9 the server after ``kill_after`` acks while
    the next submits are in flight. Returns the ids that were acknowledged."""
    client = Redis.from_url(url, retry=None, socket_timeout=2)
    log = EventLog(client, keys)
    acked: list[str] = []

    async def writer() -> None:
        while True:
            try:
                acked.append((await log.submit(SPEC)).task_id)
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                return  # no answer: not acknowledged, so not promised

    task = asyncio.create_task(writer())
    deadline = time.monotonic() + 30
    while len(acked) < kill_after:
        assert not task.done(), "the writer stopped before the kill"
        assert time.monotonic() < deadline, f"{len(acked)} of {kill_after} submits acknowledged"
        await asyncio.sleep(0.001)
    os.kill(pid, signal.SIGKILL)
    await asyncio.wait_for(task, 10)
    await client.aclose()
    return acked


@pytest.mark.slow
@pytest.mark.timeout(fault_size(420, 120))
async def test_acknowledged_submits_survive_kill_9(tmp_path: Path, namespace: str) -> None:
    keys = Keys(namespace, partitions=2)
    binary = server_binary().path
    acked: list[str] = []
    started = time.monotonic()
    for round_ in range(SIZE.rounds):
        server = EmbeddedRedis(tmp_path / "data", "durable", binary)
        url = server.start()
        assert server.pid is not None
        # Each round kills at a different count, so the kills fall on different work.
        kill_after = SIZE.acks // SIZE.rounds + 10 * (round_ % 3)
        acked += await _submit_until_killed(url, keys, kill_after, server.pid)
        server.stop()  # notices the dead server, releases the lock

    server = EmbeddedRedis(tmp_path / "data", "durable", binary)
    client = Redis.from_url(server.start())
    try:
        log = EventLog(client, keys)
        found: set[str] = set()
        queued = 0
        for p in keys.all_partitions():
            found |= {e.event.task_id for e in await log.read(keys.events(p))}
            queued += await client.xlen(keys.work(p, "cpu-light", "normal"))
        lost = set(acked) - found
        print(
            f"\nredis kill -9: {SIZE.rounds} kills and restarts in "
            f"{time.monotonic() - started:.0f} s; {len(acked)} submissions acknowledged, "
            f"{len(lost)} lost; {len(found)} in the log, {queued} work entries"
        )
        assert len(acked) >= SIZE.acks, f"only {len(acked)} submits acknowledged"
        assert not lost, f"{len(lost)} acknowledged submits lost, e.g. {sorted(lost)[:3]}"
        # every event kept its work entry (atomic submit)
        assert queued == len(found), f"{len(found)} submitted events, {queued} work entries"
    finally:
        await client.aclose()
        server.stop()
