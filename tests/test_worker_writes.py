"""Writes the worker must not lose, and the log lines when Redis is away.

Regression (issue #10): failed appends were swallowed without a word (the
previous write's error suppressed, ``gather(return_exceptions=True)`` results
dropped, a failed ``NodeStopped`` ignored). Now each failure is logged with
the task and event types it carried, and what must be written is retried.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from eventcore.connection import ClientOptions, make_client
from eventcore.errors import ScriptArgumentError
from eventcore.keys import Keys
from eventcore.log import EventLog
from eventcore.server.process import ServerConfig, ServerProcess, free_port
from tests.conftest import server_binary
from tests.workerkit import event_types, fast_settings, make_worker, spec, wait_ended
from workers.writes import backoff, is_transient, persist


def test_backoff_grows_to_its_cap_with_jitter() -> None:
    waits = [backoff(n, 1.0) for n in range(1, 10)]
    assert waits == sorted(waits) and waits[-1] == 2.0
    assert backoff(1, 0.0) == pytest.approx(0.05) and backoff(1, 1.0) == pytest.approx(0.1)
    assert all(backoff(n, 0.0) == backoff(n, 1.0) / 2 for n in range(1, 10))


def test_only_redis_being_away_is_retried() -> None:
    assert is_transient(redis.ConnectionError("refused"))
    assert is_transient(redis.TimeoutError("Timeout reading"))
    assert is_transient(redis.BusyLoadingError("LOADING"))
    assert is_transient(redis.ResponseError("MISCONF errors writing to the AOF file"))
    assert not is_transient(ScriptArgumentError("ERR eventcore settle: bad"))
    assert not is_transient(redis.ResponseError("ERR user_script:1: attempt to compare nil"))
    assert not is_transient(ValueError("a settlement needs at least one event"))


async def test_persist_raises_a_bug_at_once() -> None:
    async def bad() -> None:
        raise ScriptArgumentError("ERR eventcore settle: extra arguments")

    with pytest.raises(ScriptArgumentError):
        await persist("the outcome of task t1", bad)


async def test_persist_logs_each_failure_and_gives_up_at_its_deadline(caplog) -> None:
    calls = 0

    async def down() -> None:
        nonlocal calls
        calls += 1
        raise redis.ConnectionError("Connection refused")

    caplog.set_level(logging.WARNING, "workers.writes")
    ok, _ = await persist("task.succeeded of task t1", down, deadline=time.monotonic() + 0.5)
    assert not ok and calls >= 3
    failures = [
        r for r in caplog.records if "writing task.succeeded of task t1 failed" in r.msg % r.args
    ]
    assert len(failures) == calls - 1
    assert "gave up writing task.succeeded of task t1" in caplog.records[-1].getMessage()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(server_binary(), ServerConfig(tmp_path / "redis", port=free_port()))
    proc.start()
    yield proc
    if proc.pid is not None:
        os.kill(proc.pid, signal.SIGCONT)
    proc.stop()


def _messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records]


async def _logged(caplog, text: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not any(text in m for m in _messages(caplog)):
        assert time.monotonic() < deadline, f"never logged {text!r}"
        await asyncio.sleep(0.05)


@pytest.mark.timeout(90)
async def test_writes_during_an_outage_are_logged_and_the_outcome_retried(
    server: ServerProcess, namespace: str, caplog
) -> None:
    caplog.set_level(logging.INFO)
    client = make_client(
        server.url, ClientOptions(socket_timeout=0.5, connect_timeout=0.5, retry_attempts=0)
    )
    settings = fast_settings(namespace, lease_ms=5000)
    log = EventLog(client, Keys(namespace))
    worker = make_worker(log, settings, "w")
    run = asyncio.create_task(worker.run())
    try:
        res = await log.submit(spec("sleep", seconds=2.0, steps=8))
        t = res.task_id
        deadline = time.monotonic() + 20
        while "task.started" not in await event_types(log, t):
            assert time.monotonic() < deadline, "never started"
            await asyncio.sleep(0.02)
        assert server.pid is not None
        os.kill(server.pid, signal.SIGSTOP)
        await _logged(caplog, f"could not write task.progress of task {t}")
        await _logged(caplog, f"writing the outcomes of 1 tasks ({t}: task.succeeded) failed")
        os.kill(server.pid, signal.SIGCONT)
        assert await wait_ended(log, t, timeout=20) == "task.succeeded"
        deadline = time.monotonic() + 10
        while worker.slots.inflight:
            assert time.monotonic() < deadline, "the slot never came back"
            await asyncio.sleep(0.02)
        slots = worker.slots
        assert slots.room == slots.size + slots.prefetch and slots.free == slots.size

        # Stopping while Redis is away: the NodeStopped that cannot be written
        # is logged as lost, not dropped in silence.
        os.kill(server.pid, signal.SIGSTOP)
        worker.stop_now()
        await asyncio.wait_for(run, 20)
        assert any("gave up writing node.stopped of node w" in m for m in _messages(caplog))
    finally:
        if server.pid is not None:
            os.kill(server.pid, signal.SIGCONT)
        if not run.done():
            worker.stop_now()
            await asyncio.wait_for(run, 20)
        await client.aclose()
