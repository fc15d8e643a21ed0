"""Schema fuzzing: schemathesis generates requests for every operation in
``/openapi.json`` (valid ones and broken ones) and sends them to a real
``eventcore web`` process. No response may be a 5xx, and a refused request
(4xx) may not write anything: no task event, no control command, no blob."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from eventcore.config import Settings
from eventcore.connection import connect, sync_client
from eventcore.events import Capabilities, NodeStarted
from eventcore.keys import Keys
from eventcore.log import EventLog
from eventcore.nodes import append_node_event
from eventcore.server.process import free_port
from history.database import migrate, open_database
from tests.partitions import PARTITIONS
from web.app import create_app
from web.openapi import document

pytestmark = [pytest.mark.slow]

EXAMPLES = int(os.environ.get("EVENTCORE_TEST_FUZZ_EXAMPLES", "150"))


class Web:
    """An ``eventcore web`` process under a namespace of its own."""

    def __init__(self, redis_url: str, namespace: str, log_path: Path) -> None:
        history = log_path.parent / "history.sqlite3"
        db = open_database(str(history), writer=True)
        migrate(db)
        db.dispose()
        self.keys = Keys(namespace, PARTITIONS)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.redis = sync_client(redis_url)  # a cluster one on a cluster
        env = {
            **os.environ,
            "REDIS_URL": redis_url,
            "EVENTCORE_NAMESPACE": namespace,
            "EVENTCORE_PARTITIONS": str(PARTITIONS),
            "EVENTCORE_WEB__PORT": str(self.port),
            "EVENTCORE_WEB__READ_WAIT": "0.2",
            "EVENTCORE_WEB__RESULT_TIMEOUT": "2",
            # A SQL history with its tables, so /v1/history/* answer from it.
            "EVENTCORE_SQL__URL": f"sqlite:///{history}",
        }
        self.log_path = log_path
        self.log_file = log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "eventcore.cli", "web"],
            env=env,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
        )

    def wait_healthy(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log_file.flush()
                raise AssertionError(f"eventcore web exited: {self.log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"{self.base} did not answer /healthz within {timeout}s")

    def announce_node(self, redis_url: str) -> None:
        """A node that offers the built-in kinds, so submits are routed as in
        production; no worker runs, so nothing but requests writes the log."""

        async def announce() -> None:
            client = await connect(redis_url)
            try:
                caps = Capabilities(
                    cpu_cores=2, memory_mb=2048, handlers=("inpaint", "upscale", "noop", "sleep")
                )
                event = NodeStarted(node="fuzz-node-7f3a", capabilities=caps, queues=("cpu-light",))
                await append_node_event(EventLog(client, self.keys), event)
            finally:
                await client.aclose()

        asyncio.run(announce())

    def writes(self) -> tuple[int, ...]:
        """What a refused request must not change: the task logs, the control
        streams and the blob keys."""
        k = self.keys
        lengths = [self.redis.xlen(k.events(p)) for p in k.all_partitions()]
        controls = sorted(self.redis.scan_iter(match=k.control_pattern()))
        lengths += [self.redis.xlen(c) for c in controls]
        blobs = sum(1 for _ in self.redis.scan_iter(match=k.blob("*")))
        return (*lengths, len(controls), blobs)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.log_file.close()
        self.redis.close()


@pytest.fixture(scope="module")
def web(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Web]:
    import uuid

    log_path = tmp_path_factory.mktemp("fuzz") / "web.log"
    server = Web(redis_url, "fz" + uuid.uuid4().hex[:10], log_path)
    try:
        server.wait_healthy()
        server.announce_node(redis_url)
        yield server
    finally:
        server.stop()
    text = log_path.read_text()
    assert "Traceback" not in text, text[-4000:]


def _schema() -> schemathesis.BaseSchema:
    """The document ``/openapi.json`` serves, built from the app itself, so the
    operations are known when the tests are collected."""
    app = create_app(Settings(), "redis://unused")
    return schemathesis.openapi.from_dict(document(app, app.state.api_bodies))


SCHEMA = _schema()
OPERATIONS = {op.label: op for op in (result.ok() for result in SCHEMA.get_all_operations())}


def _send(web: Web, case: schemathesis.Case) -> int:
    if case.path == "/v1/stream":
        # A stream that is accepted never ends: its status line is the answer.
        with httpx.stream(
            case.method,
            f"{web.base}{case.formatted_path}",
            params=case.query,
            headers={k: str(v) for k, v in (case.headers or {}).items()},
            timeout=10,
        ) as response:
            return response.status_code
    response = case.call(base_url=web.base, timeout=30)
    if case.path == "/readyz" and response.status_code == 503:
        # The probe's documented "not ready" (no projector runs here), not a
        # server error: it must still be the JSON that says why.
        assert response.json()["error"] == "not_ready", response.text
        return response.status_code
    case.validate_response(response, checks=[not_a_server_error])
    return response.status_code


@pytest.mark.parametrize("label", sorted(OPERATIONS))
def test_no_server_errors_and_no_writes_on_refusal(label: str, web: Web) -> None:
    @given(case=OPERATIONS[label].as_strategy())
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def check(case: schemathesis.Case) -> None:
        before = web.writes()
        status = _send(web, case)
        not_ready = case.path == "/readyz" and status == 503
        assert status < 500 or not_ready, f"{case.method} {case.formatted_path} answered {status}"
        if 400 <= status < 500:
            assert web.writes() == before, f"{label} answered {status} but wrote"

    check()
