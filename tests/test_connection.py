"""Start-up connection errors are one clear line; transient errors are retried."""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import redis
from redis.asyncio import BlockingConnectionPool

from eventcore.connection import check_url, connect, redact
from eventcore.errors import RedisUnavailable
from eventcore.server.process import free_port as _free_port
from tests.conftest import server_binary


def test_redact_hides_the_password() -> None:
    assert redact("redis://user:s3cret@host:6379/0") == "redis://user:***@host:6379/0"
    assert redact("redis://host:6379/0") == "redis://host:6379/0"


@pytest.mark.parametrize("url", ["http://localhost:6379", "localhost:6379", "postgres://x/y"])
def test_wrong_scheme_says_which(url: str) -> None:
    with pytest.raises(RedisUnavailable, match="scheme"):
        check_url(url)


async def test_unreachable_is_one_line_naming_the_address() -> None:
    port = _free_port()
    with pytest.raises(RedisUnavailable) as err:
        await connect(f"redis://127.0.0.1:{port}/0")
    message = str(err.value)
    assert f"127.0.0.1:{port}" in message and "\n" not in message


async def test_connect_returns_working_client(redis_url: str) -> None:
    client = await connect(redis_url)
    try:
        assert await client.ping()
    finally:
        await client.aclose()


@pytest.fixture
def password_server():
    port = _free_port()
    proc = subprocess.Popen(
        [server_binary().path, "--port", str(port), "--save", "", "--requirepass", "pw"],
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port, password="pw")
    for _ in range(200):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.02)
    yield port
    proc.kill()
    proc.wait()


async def test_auth_failure_says_so_and_hides_password(password_server: int) -> None:
    with pytest.raises(RedisUnavailable, match=r"credentials|password") as err:
        await connect(f"redis://default:wrong@127.0.0.1:{password_server}/0")
    assert "wrong" not in str(err.value)
    with pytest.raises(RedisUnavailable, match="password"):
        await connect(f"redis://127.0.0.1:{password_server}/0")
    client = await connect(f"redis://default:pw@127.0.0.1:{password_server}/0")
    assert await client.ping()
    await client.aclose()


@pytest.mark.slow
async def test_transient_outage_is_ridden_out_by_retries() -> None:
    """A Redis restart while a client is in use: the next command waits and succeeds."""
    import asyncio

    from eventcore.connection import ClientOptions, make_client

    port = _free_port()
    cmd = [server_binary().path, "--port", str(port), "--save", "", "--appendonly", "no"]

    def start() -> subprocess.Popen:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
        probe = redis.Redis(port=port)
        for _ in range(200):
            try:
                probe.ping()
                return proc
            except redis.ConnectionError:
                time.sleep(0.02)
        raise RuntimeError("server did not start")

    proc = start()
    client = make_client(f"redis://127.0.0.1:{port}/0", ClientOptions(retry_attempts=8))
    try:
        await client.set("k", "v")
        proc.kill()
        proc.wait()
        restarted: list[subprocess.Popen] = []

        async def restart_later() -> None:
            await asyncio.sleep(0.5)
            restarted.append(await asyncio.to_thread(start))

        task = asyncio.create_task(restart_later())
        assert await client.ping()  # retried until the server is back
        await task
    finally:
        await client.aclose()
        for p in (proc, *restarted):
            p.kill()
            p.wait()


# -- the pool ------------------------------------------------------------------


async def test_a_burst_waits_for_a_pooled_connection(single_url: str) -> None:
    """Regression: past the pool's cap a command failed at once with "Too many
    connections" (redis-py's ConnectionPool); now it waits for a free one.
    (The cluster client's wait: ``tests/test_cluster.py``.)"""
    from eventcore.connection import ClientOptions, make_client

    client = make_client(single_url, ClientOptions(max_connections=2, pool_timeout=10))
    try:
        # Each BLPOP holds its connection for its whole timeout.
        key = f"t{uuid.uuid4().hex}"
        got = await asyncio.gather(*(client.blpop([key], timeout=0.05) for _ in range(12)))
        assert got == [None] * 12
        assert len(client.connection_pool._available_connections) <= 2
    finally:
        await client.aclose()


async def test_a_pool_wait_that_runs_out_is_a_connection_error(single_url: str) -> None:
    """The wait is bounded: it ends as a ConnectionError, which the web
    answers as 503 like any unreachable Redis. (On a single server: a plain
    client on a cluster node is answered MOVED for most keys, at once.)"""
    from eventcore.connection import ClientOptions, make_client

    client = make_client(
        single_url, ClientOptions(max_connections=1, pool_timeout=0.2, retry_attempts=0)
    )
    try:
        holder = asyncio.create_task(client.blpop([f"t{uuid.uuid4().hex}"], timeout=1))
        deadline = time.monotonic() + 10
        while not client.connection_pool._in_use_connections:
            assert not holder.done(), holder.result()  # the BLPOP must hold its connection
            assert time.monotonic() < deadline, "the BLPOP never took its connection"
            await asyncio.sleep(0.01)
        started = time.monotonic()
        with pytest.raises(redis.ConnectionError):
            await client.ping()
        assert time.monotonic() - started < 2
        await holder
    finally:
        await client.aclose()


@pytest.mark.parametrize("over", ["tcp", "unix"])
async def test_pooled_clients_keep_the_fast_packing(over: str, tmp_path: Path) -> None:
    from eventcore.connection import _FAST, make_client
    from eventcore.server.process import ServerConfig, ServerProcess

    config = (
        ServerConfig(tmp_path, port=_free_port())
        if over == "tcp"
        else ServerConfig(tmp_path, unix_socket=True)
    )
    server = ServerProcess(server_binary(), config)
    url = server.start()
    client = make_client(url)
    try:
        assert url.startswith("unix://" if over == "unix" else "redis://")
        pool = client.connection_pool
        assert isinstance(pool, BlockingConnectionPool)
        assert pool.connection_class in _FAST.values()
        assert await client.set("k", "v") and await client.get("k") == b"v"
    finally:
        await client.aclose()
        server.stop()


def test_tls_urls_get_the_fast_tls_connection() -> None:
    from eventcore.connection import _FastSSLConnection, make_client

    client = make_client("rediss://127.0.0.1:6380/0")  # not contacted
    assert client.connection_pool.connection_class is _FastSSLConnection
