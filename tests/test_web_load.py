"""A burst of clients on one web process: every request is answered, none
with a 5xx.

Regression: the Redis client pool refused a command past its connection cap
(redis-py's ``ConnectionPool`` raises "Too many connections" since it got a
default cap) instead of waiting for a connection, so about half of 300
concurrent requests, and most of 1,000 SSE clients reconnecting at once after
a web restart, were answered 503; a browser's ``EventSource`` does not retry
after a 503. The pool now waits a bounded time for a free connection, and an
SSE connect no longer takes a connection of its own to check Redis.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import resource
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis.asyncio.cluster import RedisCluster

from eventcore.config import RedisSettings, Settings
from eventcore.connection import Client
from eventcore.ids import new_task_id
from eventcore.keys import Keys
from eventcore.server.process import ServerConfig, ServerProcess, free_port
from tests.conftest import server_binary
from tests.webkit import j, web_client
from web.position import encode_position

N = 1000
REQUEST_TIMEOUT = 45.0  # seconds; longer than the web's own waits (redis.pool_timeout)


def _raise_fd_limit(want: int) -> None:
    """Room for N client sockets here and N server sockets in the web process
    (which inherits the limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < want:
        target = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY and soft < want:
        pytest.skip(f"needs {want} open files, the hard limit allows {soft}")


@dataclass
class Web:
    host: str
    port: int
    log_path: Path

    def log_summary(self) -> str:
        """What the web process logged, each distinct message once with its count."""
        lines = self.log_path.read_text(errors="replace").splitlines()
        messages = Counter(re.sub(r"^\S+ \S+ ", "", line)[:160] for line in lines)
        return "\n".join(f"{n:5} {m}" for m, n in messages.most_common(10))


@pytest.fixture
async def web(redis_url: str, tmp_path: Path) -> AsyncIterator[Web]:
    """``eventcore web`` as its own process, against the session's Redis under
    a fresh namespace."""
    _raise_fd_limit(2 * N + 500)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTCORE_")}
    env.update(
        REDIS_URL=redis_url,
        EVENTCORE_NAMESPACE="t" + uuid.uuid4().hex[:12],
        EVENTCORE_WEB__SSE_PING="1",  # an SSE client's first bytes within a second
    )
    log_path = tmp_path / "web.log"
    with open(log_path, "wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "eventcore.cli", "web", "--port", "0"),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
        )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        m = re.match(r"web: listening on http://([^:]+):(\d+)", line)
        assert m, f"eventcore web did not start: {line!r}\n{log_path.read_text()[-2000:]}"
        yield Web(m[1], int(m[2]), log_path)
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                proc.kill()
                await proc.wait()
    assert "Traceback" not in log_path.read_text(errors="replace")


async def _request(
    web: Web, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> int | str:
    """One request on a connection of its own; the status it got, or the name
    of the error that kept it unanswered. For ``/v1/stream`` a 200 counts once
    the first bytes of the body (a ping at least) have come.

    Plain sockets rather than httpx: a thousand httpx requests at once cost
    this process twice the CPU the web process spends answering them, and on
    a shared machine the test's own lag would then be most of what it times.
    """
    head = [f"{method} {path} HTTP/1.1", f"Host: {web.host}", "Connection: close"]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body:
        head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT):
            reader, writer = await asyncio.open_connection(web.host, web.port)
            try:
                writer.write("\r\n".join(head).encode() + b"\r\n\r\n" + body)
                status = int((await reader.readuntil(b"\r\n")).split()[1])
                await reader.readuntil(b"\r\n\r\n")
                if path.startswith("/v1/stream") and status == 200:
                    if not await reader.read(1):
                        return "stream ended before its first bytes"
                else:
                    await reader.read()  # to the end, so the answer was whole
                return status
            finally:
                writer.close()
    except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
        return type(exc).__name__


def _failed(statuses: Counter[int | str]) -> Counter[int | str]:
    """The 5xx answers and the requests left unanswered."""
    return Counter({s: n for s, n in statuses.items() if not isinstance(s, int) or s >= 500})


@pytest.mark.slow
@pytest.mark.timeout(150)
async def test_a_burst_of_clients_gets_answers_not_503(web: Web) -> None:
    submit = json.dumps({"kind": "noop"}).encode()
    first = await _request(web, "POST", "/v1/tasks", submit)
    assert first == 202, f"{first}\n{web.log_summary()}"
    # Without a projector the views hold no task: a read of one is looked up
    # in Redis and answered 404, which is an answer.
    paths = [f"/v1/tasks/{new_task_id()}" if i % 2 else "/v1/queues" for i in range(N)]
    # A browser resuming sends the id of the last event it saw.
    now = (int(time.time() * 1000), 0)
    shards = len(Keys().view_shards())  # the web under test runs one partition
    resume = {"Last-Event-ID": encode_position((now,) * shards)}
    bursts = {
        "submits": lambda: [_request(web, "POST", "/v1/tasks", submit) for _ in range(N)],
        "reads": lambda: [_request(web, "GET", path) for path in paths],
        "SSE connects": lambda: [
            _request(web, "GET", "/v1/stream", headers=resume if i % 4 == 0 else None)
            for i in range(N)
        ],
    }
    took: dict[str, float] = {}
    got: dict[str, Counter[int | str]] = {}
    for name, burst in bursts.items():
        started = time.monotonic()
        got[name] = Counter(await asyncio.gather(*burst()))
        took[name] = time.monotonic() - started
    print(", ".join(f"{N} {name} in {took[name]:.1f}s: {dict(got[name])}" for name in got))
    assert not any(_failed(c) for c in got.values()), f"{got}\n{web.log_summary()}"
    assert got["submits"] == {202: N}, got
    assert set(got["reads"]) <= {200, 404}, got
    assert got["SSE connects"] == {200: N}, got


def _all_busy(client: Client) -> bool:
    """Whether a command now has to wait for a connection: the single-server
    pool has none free, or every place of the cluster client is taken."""
    if isinstance(client, RedisCluster):
        return client.places.locked()  # type: ignore[attr-defined]
    return bool(client.connection_pool._in_use_connections)


async def test_a_pool_wait_that_runs_out_is_a_503_with_retry_after(
    redis_url: str, namespace: str
) -> None:
    """Past ``redis.pool_timeout`` a request gives up as when Redis is away:
    503 and Retry-After, never a 500."""
    settings = Settings(
        namespace=namespace, redis=RedisSettings(max_connections=1, pool_timeout=0.1)
    )
    async with web_client(redis_url, settings) as c:
        web = c.app.state.web  # type: ignore[attr-defined]
        # The request client's one connection, held for half a second.
        holder = asyncio.create_task(web.redis.blpop([f"{namespace}:held"], timeout=0.5))
        while not _all_busy(web.redis):
            await asyncio.sleep(0.01)
        r = await c.get("/v1/queues")
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"] == "1"
        assert j(r)["error"] == "unavailable"
        await holder
        assert (await c.get("/v1/queues")).status_code == 200


@pytest.mark.slow
async def test_an_sse_connect_without_redis_is_still_a_503(tmp_path: Path, namespace: str) -> None:
    """A new SSE client is checked against the feed reader, not with a PING
    of its own. Once the reader's reads fail or go stale (within about
    ``stale_after`` seconds of Redis going away) a connect is a 503 with
    Retry-After, as before, and answered within about ``web.redis_timeout``."""
    server = ServerProcess(server_binary(), ServerConfig(tmp_path, port=free_port()))
    server.start()
    try:
        async with web_client(server.url, Settings(namespace=namespace)) as c:
            hub = c.app.state.web.hub  # type: ignore[attr-defined]
            assert await hub.wait_live(5)
            server.kill()
            gone = time.monotonic()
            while hub.live():
                assert time.monotonic() - gone < 10, "the feed reader did not notice"
                await asyncio.sleep(0.05)
            started = time.monotonic()
            r = await c.get("/v1/stream")
            took = time.monotonic() - started
            assert r.status_code == 503, r.text
            assert r.headers["retry-after"] == "1"
            assert j(r)["error"] == "unavailable"
            assert took < 2, f"took {took:.1f}s"
    finally:
        server.stop()
