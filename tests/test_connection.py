"""Start-up connection errors are one clear line; transient errors are retried."""

from __future__ import annotations

import subprocess
import time

import pytest
import redis

from eventcore.connection import check_url, connect, redact
from eventcore.errors import RedisUnavailable
from eventcore.servers import free_port as _free_port
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
