"""A real worker through a Redis outage: the server is frozen for 30 s while
tasks finish, then killed and restarted from its AOF (durable profile).

Regression (issue #10): a settle batch that failed after the client's retries
was dropped; its tasks were run again only after their leases, one by one,
because the slots they held never came back, and the worker ran at a
fraction of its concurrency from then on.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from eventcore.connection import ClientOptions, make_client
from eventcore.events import NodeHeartbeat, TaskStarted, TaskSucceeded
from eventcore.keys import Keys
from eventcore.log import EventLog, Submission
from eventcore.server.embedded import durability_config
from eventcore.server.process import ServerConfig, ServerProcess, free_port
from tests.checker import History, check
from tests.conftest import server_binary
from tests.workerkit import spawn_worker, spec

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

CONCURRENCY = 4  # spawn_worker's
OUTAGE = 30.0
# Short client timeouts, so the worker's writes fail during the outage rather
# than wait it out inside the client's own retries.
CLIENT_ENV = {
    "EVENTCORE_REDIS__SOCKET_TIMEOUT": "2",
    "EVENTCORE_REDIS__CONNECT_TIMEOUT": "1",
    "EVENTCORE_REDIS__RETRY_ATTEMPTS": "1",
}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        server_binary(),
        ServerConfig(tmp_path / "redis", port=free_port(), settings=durability_config("durable")),
    )
    proc.start()
    yield proc
    if proc.pid is not None:
        os.kill(proc.pid, signal.SIGCONT)  # a failed test may leave it frozen
    proc.stop()


async def _wait(what: str, fact, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await fact():
        assert time.monotonic() < deadline, f"{what} within {timeout}s"
        await asyncio.sleep(0.1)


async def _events(log: EventLog, cls: type) -> list:
    return [e.event for e in await log.read(log.keys.events(0)) if isinstance(e.event, cls)]


async def _last_heartbeat(log: EventLog, node: str) -> NodeHeartbeat | None:
    for e in reversed(await log.read(log.keys.nodes())):
        if isinstance(e.event, NodeHeartbeat) and e.event.node == node:
            return e.event
    return None


async def test_settles_survive_a_frozen_then_restarted_redis(
    server: ServerProcess, namespace: str, tmp_path: Path
) -> None:
    r: Redis = make_client(server.url, ClientOptions(retry_attempts=3, socket_timeout=5))
    log = EventLog(r, Keys(namespace))
    history = History(tmp_path / "history.jsonl")
    log_path = tmp_path / "worker.log"
    log_file = log_path.open("wb")
    worker = spawn_worker(server.url, namespace, "w", ["--cpu"], env=CLIENT_ENV, stderr=log_file)
    try:
        # Two rounds of sleeps: the first round ends while Redis is frozen.
        batch = [Submission(spec=spec("sleep", seconds=1.0, steps=2)) for _ in range(8)]
        history.record("invoke", "submit", n=len(batch))
        results = await log.submit_many(batch)
        history.ok |= {x.task_id for x in results}
        history.record("ok", "submit", ids=[x.task_id for x in results])

        async def all_slots_running() -> bool:
            return len(await _events(log, TaskStarted)) >= CONCURRENCY

        await _wait("the first round started", all_slots_running, 20)
        assert server.pid is not None
        os.kill(server.pid, signal.SIGSTOP)
        await asyncio.sleep(OUTAGE)  # the outage itself is what is tested
        server.kill()  # SIGKILL while frozen: only what reached the AOF survives
        server.start()

        async def all_ended() -> bool:
            return await r.hlen(log.keys.done(0)) >= len(batch)

        await _wait("every task ended after the outage", all_ended, 40)

        async def idle_heartbeat() -> bool:
            beat = await _last_heartbeat(log, "w")
            return beat is not None and beat.running == () and beat.free_slots == CONCURRENCY

        await _wait("an idle heartbeat with every slot free", idle_heartbeat, 10)

        # The full concurrency is back: a new round of `concurrency` sleeps
        # all start before the first of them ends.
        again = await log.submit_many(
            [Submission(spec=spec("sleep", seconds=2.0, steps=1)) for _ in range(CONCURRENCY)]
        )
        history.ok |= {x.task_id for x in again}
        ids = {x.task_id for x in again}

        async def round_ended() -> bool:
            return all([await log.ended_as(t) for t in ids])

        await _wait("the second round ended", round_ended, 30)
    finally:
        worker.kill()
        worker.wait(10)
        log_file.close()
    log_text = log_path.read_text(errors="replace")
    starts = [e.at for e in await _events(log, TaskStarted) if e.task_id in ids]
    ends = [e.at for e in await _events(log, TaskSucceeded) if e.task_id in ids]
    assert len(starts) == CONCURRENCY and len(ends) == CONCURRENCY
    assert max(starts) < min(ends), "the new round did not run all at once: slots were lost"
    verdict = await check(log, history)
    assert (verdict.lost, verdict.phantom, verdict.double) == ([], [], [])
    assert verdict.terminal == len(batch) + CONCURRENCY
    # The failed settles were logged, not swallowed.
    assert "retrying in" in log_text, log_text[-3000:]
    await r.aclose()
