"""A master of a Redis Cluster killed with SIGKILL under a stream of submits
(``appendfsync always``) and restarted on its AOF: the client follows the
cluster as it comes back, and every acknowledged submit is in the log."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from redis.exceptions import RedisError

from eventcore.connection import ClientOptions, connect
from eventcore.events import TaskSpec
from eventcore.keys import Keys
from eventcore.log import EventLog
from eventcore.server.cluster import LocalCluster
from tests.conftest import server_binary

PARTITIONS = 3


async def _submitted(log: EventLog) -> set[str]:
    found: set[str] = set()
    for p in log.keys.all_partitions():
        for entry in await log.read(log.keys.events(p)):
            if entry.event.type_name() == "task.submitted":
                found.add(entry.event.task_id)
    return found


@pytest.mark.timeout(120)
async def test_a_killed_master_restarted_on_its_aof_loses_no_acknowledged_submit(
    tmp_path: Path,
) -> None:
    durable = {"appendonly": "yes", "appendfsync": "always"}
    with LocalCluster(tmp_path, 3, server_binary(), settings=durable, node_timeout_ms=1000) as c:
        options = ClientOptions(retry_attempts=1, socket_timeout=1.0, connect_timeout=0.5)
        redis = await connect(c.url, options)
        log = EventLog(redis, Keys("dur", PARTITIONS))
        acked: list[str] = []
        failed = 0
        stop = asyncio.Event()

        async def submit() -> None:
            nonlocal failed
            while not stop.is_set():
                try:
                    acked.append((await log.submit(TaskSpec(kind="noop", queue="q"))).task_id)
                except (RedisError, OSError):
                    failed += 1  # no answer: not acknowledged, so not promised
                    await asyncio.sleep(0.05)

        writer = asyncio.create_task(submit())
        try:
            while len(acked) < 200:
                await asyncio.sleep(0.02)
            victim = c.nodes[1]
            victim.process.kill()
            before = len(acked)
            deadline = time.monotonic() + 30
            while failed == 0:  # the partition on that master cannot be written
                assert time.monotonic() < deadline, "no submit noticed the killed master"
                await asyncio.sleep(0.02)
            victim.process.start()
            await asyncio.to_thread(c.wait_ok, 30)
            deadline = time.monotonic() + 30
            while len(acked) < before + 300:  # and every partition takes submits again
                assert time.monotonic() < deadline, f"submits did not resume: {len(acked)}"
                await asyncio.sleep(0.02)
        finally:
            stop.set()
            await writer
        found = await _submitted(log)
        await redis.aclose()
    lost = [t for t in acked if t not in found]
    assert lost == [], f"{len(lost)} of {len(acked)} acknowledged submits lost"
    assert {log.keys.partition(t) for t in acked[before:]} == set(range(PARTITIONS))
    print(f"\ncluster master kill -9: {len(acked)} acknowledged, {failed} refused, 0 lost")
