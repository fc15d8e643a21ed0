"""``eventcore redis|up --listen``: the embedded Redis on TCP behind a
generated password, TLS with a certificate, nothing open without a password
beyond loopback."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import redis

from eventcore.cli.main import build_parser
from eventcore.server.access import (
    ACL_USER,
    Access,
    AccessError,
    Listen,
    TlsFiles,
    parse_listen,
    read_or_create_password,
    remote_url,
)
from eventcore.server.process import find_server_binary, free_port, supports_tls
from tests.listenkit import (
    JOIN_RE,
    join_url,
    openssl_cert,
    read_until,
    refused_for_auth,
    start_cli,
    stop,
)
from tests.replaykit import cli

# --- pure parts -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "host", "port", "loopback"),
    [
        ("127.0.0.1:6380", "127.0.0.1", 6380, True),
        ("0.0.0.0:1", "0.0.0.0", 1, False),
        ("*:6380", "0.0.0.0", 6380, False),
        ("[::1]:6380", "::1", 6380, True),
        ("localhost:65535", "127.0.0.1", 65535, True),
        ("10.1.2.3:6380", "10.1.2.3", 6380, False),
    ],
)
def test_parse_listen(text: str, host: str, port: int, loopback: bool) -> None:
    listen = parse_listen(text)
    assert (listen.host, listen.port, listen.loopback) == (host, port, loopback)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("6380", "HOST:PORT"),
        ("127.0.0.1:", "port"),
        ("127.0.0.1:70000", "port"),
        ("127.0.0.1:http", "port"),
        ("example.com:6380", "IP address"),
    ],
)
def test_parse_listen_refuses(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_listen(text)


def test_no_password_only_on_loopback() -> None:
    Access(Listen("127.0.0.1", 6380), None).check()
    Access(Listen("::1", 6380), None).check()
    for host in ("0.0.0.0", "10.0.0.1", "::"):
        with pytest.raises(AccessError, match="loopback"):
            Access(Listen(host, 6380), None).check()
    Access(Listen("0.0.0.0", 6380), "secret").check()


def test_remote_url_schemes() -> None:
    plain = Access(Listen("0.0.0.0", 6380), "p-w_d")
    assert remote_url(plain, "10.0.0.1") == f"redis://{ACL_USER}:p-w_d@10.0.0.1:6380/0"
    tls = Access(Listen("::", 6380), "pw", TlsFiles(Path("/c"), Path("/k"), Path("/ca.pem")))
    assert remote_url(tls, "fd00::1") == (
        f"rediss://{ACL_USER}:pw@[fd00::1]:6380/0?ssl_ca_certs=/ca.pem"
    )


def test_password_file_is_private_and_reused(tmp_path: Path) -> None:
    first = read_or_create_password(tmp_path)
    path = tmp_path / "redis.password"
    assert path.stat().st_mode & 0o777 == 0o600 and len(first) >= 24
    assert read_or_create_password(tmp_path) == first
    path.chmod(0o644)
    with pytest.raises(AccessError, match="readable by others"):
        read_or_create_password(tmp_path)


# --- the command line -----------------------------------------------------------


def test_listen_options_parse() -> None:
    args = build_parser().parse_args(
        ["up", "--listen", "0.0.0.0:6380", "--tls-cert", "c", "--tls-key", "k"]
    )
    assert args.listen == Listen("0.0.0.0", 6380) and (args.tls_cert, args.tls_key) == ("c", "k")
    args = build_parser().parse_args(["redis", "--listen", "127.0.0.1:6380", "--no-password"])
    assert args.listen.loopback and args.no_password


def test_bad_listen_is_a_usage_error(tmp_path: Path) -> None:
    res = cli("redis", "--listen", "nowhere", cwd=tmp_path, timeout=30)
    assert res.returncode == 2 and "HOST:PORT" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--listen", "0.0.0.0:6380", "--no-password"], "loopback"),
        (["--tls-cert", "c.pem", "--tls-key", "k.pem"], "need --listen"),
        (["--listen", "127.0.0.1:6380", "--tls-cert", "c.pem"], "go together"),
        (["--listen", "127.0.0.1:6380", "--tls-cert", "c.pem", "--tls-key", "k"], "certificate"),
    ],
)
@pytest.mark.parametrize("command", ["redis", "up"])
def test_unsafe_or_incomplete_listen_is_refused_before_anything_starts(
    tmp_path: Path, command: str, argv: list[str], says: str
) -> None:
    data = tmp_path / "data"
    env = {"EVENTCORE_REDIS__DATA_DIR": str(data)}
    res = cli(command, *argv, env=env, cwd=tmp_path, timeout=30)
    assert res.returncode == 1, res.stdout + res.stderr
    assert says in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not data.exists()


def test_listen_with_redis_url_set_is_refused(tmp_path: Path) -> None:
    env = {"REDIS_URL": "redis://127.0.0.1:1/0"}
    res = cli("redis", "--listen", "127.0.0.1:6380", env=env, cwd=tmp_path, timeout=30)
    assert res.returncode == 1 and "REDIS_URL" in res.stderr and "Traceback" not in res.stderr


# --- real servers ---------------------------------------------------------------


def _refused(url: str) -> str:
    """The error a client at ``url`` gets for a write."""
    with redis.Redis.from_url(url, socket_timeout=5) as client:
        with pytest.raises(redis.RedisError) as caught:
            client.set("ec:listen:probe", "x")
    return str(caught.value)


@pytest.mark.slow
def test_redis_listen_serves_the_printed_url_and_refuses_others(tmp_path: Path) -> None:
    """The printed URL works; no password or a wrong one is refused; local
    tools still attach through the socket; a restart prints the same line."""
    port = free_port()
    env = {"EVENTCORE_REDIS__DATA_DIR": str(tmp_path / "data")}
    proc = start_cli("redis", "--listen", f"127.0.0.1:{port}", env=env, cwd=tmp_path)
    try:
        lines = read_until(proc, JOIN_RE, 30)
        url = join_url(lines)
        assert lines[0].startswith("unix://") and url.startswith(f"redis://{ACL_USER}:")
        with redis.Redis.from_url(url, socket_timeout=5) as client:
            assert client.set("ec:listen:probe", "x") and client.get("ec:listen:probe") == b"x"
        assert refused_for_auth(_refused(f"redis://127.0.0.1:{port}/0"))
        assert refused_for_auth(_refused(re.sub(r":[^:@]+@", ":wrong@", url)))
        # The default user is off on the socket too: only the URL with the password works.
        socket_path = json.loads((tmp_path / "data" / "server.json").read_text())["socket"]
        assert refused_for_auth(_refused(f"unix://{socket_path}?db=0"))
        status = cli("status", "--json", env=env, cwd=tmp_path, timeout=60)
        assert status.returncode == 0, status.stderr
        for name in ("redis.password", "users.acl", "server.json"):
            assert (tmp_path / "data" / name).stat().st_mode & 0o777 == 0o600, name
        assert "secret" not in (tmp_path / "data" / "users.acl").read_text()
    finally:
        code, err = stop(proc)
    assert code == 0, err
    again = start_cli("redis", "--listen", f"127.0.0.1:{port}", env=env, cwd=tmp_path)
    try:
        assert join_url(read_until(again, JOIN_RE, 30)) == url
        with redis.Redis.from_url(url, socket_timeout=5) as client:
            assert client.get("ec:listen:probe") == b"x"  # the AOF, with the same password
    finally:
        code, err = stop(again)
    assert code == 0, err


@pytest.mark.slow
def test_listen_asked_of_a_running_server_without_it_is_refused(tmp_path: Path) -> None:
    env = {"EVENTCORE_REDIS__DATA_DIR": str(tmp_path / "data")}
    plain = start_cli("redis", env=env, cwd=tmp_path)
    try:
        read_until(plain, re.compile("^unix://"), 30)
        res = cli("redis", "--listen", f"127.0.0.1:{free_port()}", env=env, cwd=tmp_path)
        assert res.returncode == 1 and "already runs" in res.stderr, res.stderr
        assert "Traceback" not in res.stderr
    finally:
        code, err = stop(plain)
    assert code == 0, err


def _tls_binary() -> str | None:
    for prefer in ("path", "bundled"):
        try:
            binary = find_server_binary(prefer=prefer)  # type: ignore[arg-type]
        except Exception:
            continue
        if supports_tls(binary):
            return binary.path
    return None


@pytest.mark.slow
def test_redis_listen_with_tls(tmp_path: Path) -> None:
    binary = _tls_binary()
    if binary is None:
        pytest.skip("no redis-server / valkey-server built with TLS here")
    made = openssl_cert(tmp_path, ["127.0.0.1"])
    if made is None:
        pytest.skip("no openssl command to make a certificate")
    cert, key = made
    port = free_port()
    env = {"EVENTCORE_REDIS__DATA_DIR": str(tmp_path / "data")}
    argv = ["--listen", f"127.0.0.1:{port}", "--tls-cert", str(cert), "--tls-key", str(key)]
    proc = start_cli("redis", *argv, "--tls-ca", str(cert), env=env, cwd=tmp_path)
    try:
        url = join_url(read_until(proc, JOIN_RE, 30))
        assert url.startswith("rediss://") and f"ssl_ca_certs={cert}" in url
        with redis.Redis.from_url(url, socket_timeout=5) as client:
            assert client.set("ec:listen:tls", "y")
        tls_no_password = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}"
        assert refused_for_auth(_refused(tls_no_password))
        with pytest.raises(redis.ConnectionError):  # plain TCP does not speak to a TLS port
            with redis.Redis.from_url(url.replace("rediss://", "redis://").split("?")[0]) as c:
                c.ping()
    finally:
        code, err = stop(proc)
    assert code == 0, err


@pytest.mark.slow
def test_tls_with_a_server_without_it_says_so(tmp_path: Path) -> None:
    bundled = find_server_binary(prefer="bundled")
    if supports_tls(bundled):
        pytest.skip("the bundled server has TLS")
    made = openssl_cert(tmp_path, ["127.0.0.1"])
    if made is None:
        pytest.skip("no openssl command to make a certificate")
    cert, key = made
    env = {
        "EVENTCORE_REDIS__DATA_DIR": str(tmp_path / "data"),
        "EVENTCORE_REDIS_SERVER": bundled.path,
    }
    argv = ["--listen", f"127.0.0.1:{free_port()}", "--tls-cert", str(cert), "--tls-key", str(key)]
    res = cli("redis", *argv, env=env, cwd=tmp_path, timeout=60)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "no TLS support" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.slow
def test_up_listen_prints_the_line_and_its_roles_use_the_password(tmp_path: Path) -> None:
    port = free_port()
    env = {
        "EVENTCORE_REDIS__DATA_DIR": str(tmp_path / "data"),
        "EVENTCORE_WEB__PORT": str(free_port()),
    }
    proc = start_cli("up", "--listen", f"127.0.0.1:{port}", env=env, cwd=tmp_path)
    try:
        lines = read_until(proc, JOIN_RE, 60)
        url = join_url(lines)
        password = url.split("@")[0].rsplit(":", 1)[1]
        up_line = next(line for line in lines if line.startswith("eventcore is up."))
        assert "unix://" in up_line and password not in up_line
        with redis.Redis.from_url(url, socket_timeout=5) as client:
            assert client.ping()
        assert refused_for_auth(_refused(f"redis://127.0.0.1:{port}/0"))
        # The roles reach Redis through the socket, with the password: the web
        # address is printed once /readyz (which needs Redis and the projector) is 200.
        read_until(proc, re.compile(r"^\s*web: http://"), 90)
    finally:
        code, err = stop(proc, timeout=60)
    assert code == 0, err


@pytest.mark.slow
def test_no_password_on_loopback_listens_without_one(tmp_path: Path) -> None:
    port = free_port()
    env = {"EVENTCORE_REDIS__DATA_DIR": str(tmp_path / "data")}
    argv = ["--listen", f"127.0.0.1:{port}", "--no-password"]
    proc = start_cli("redis", *argv, env=env, cwd=tmp_path)
    try:
        url = join_url(read_until(proc, JOIN_RE, 30))
        assert url == f"redis://127.0.0.1:{port}/0"
        with redis.Redis.from_url(url, socket_timeout=5) as client:
            assert client.ping()
        assert not (tmp_path / "data" / "redis.password").exists()
        # The same directory asked for a password now: the running server has none.
        res = cli("redis", "--listen", f"127.0.0.1:{port}", env=env, cwd=tmp_path)
        assert res.returncode == 1 and "without a password" in res.stderr, res.stderr
    finally:
        code, err = stop(proc)
    assert code == 0, err


@pytest.mark.slow
def test_a_second_redis_command_reuses_the_listening_server_and_prints_its_line(
    tmp_path: Path,
) -> None:
    port = free_port()
    env = {"EVENTCORE_REDIS__DATA_DIR": str(tmp_path / "data")}
    first = start_cli("redis", "--listen", f"127.0.0.1:{port}", env=env, cwd=tmp_path)
    try:
        url = join_url(read_until(first, JOIN_RE, 30))
        second = start_cli("redis", env=env, cwd=tmp_path)
        try:
            lines = read_until(second, JOIN_RE, 30)
            assert join_url(lines) == url
            assert f"listens on 127.0.0.1:{port}." in lines[1]
        finally:
            code, err = stop(second)
        assert code == 0, err
    finally:
        code, err = stop(first)
    assert code == 0, err
