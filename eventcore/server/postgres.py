"""Finding and running a PostgreSQL server, for tests and tooling.

The counterpart of :mod:`eventcore.server.process` for PostgreSQL, run the
same way: ``postgres`` is a child process in the foreground, its log in a
file in its directory, ready once it accepts a connection. The first
``start()`` makes a cluster with ``initdb`` (superuser ``postgres``, trust
authentication, no password) and a database ``eventcore``; later starts use
the same cluster, so ``stop()`` or ``kill()`` and ``start()`` again show what
survives. The server listens on 127.0.0.1 and on a unix socket in the
cluster directory.

PostgreSQL refuses to run as root, so as root every PostgreSQL program runs
as the ``postgres`` OS user, who must be able to reach the cluster. The
cluster is ``<dir>/pgdata`` with ``dir`` given to that user; but when a
directory above ``dir`` is closed to it (pytest's ``tmp_path`` lies inside
root's 0700 ``pytest-of-root``), the cluster lives in a private directory
under /tmp instead, linked from ``<dir>/pgdata`` and removed by
:meth:`PostgresProcess.close`.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import psycopg
from psycopg import sql

from eventcore.errors import PostgresUnavailable
from eventcore.server.process import MAX_SOCKET_PATH, free_port

__all__ = [
    "ENV_BINDIR",
    "PostgresBinaries",
    "PostgresConfig",
    "PostgresNotFound",
    "PostgresProcess",
    "PostgresStartError",
    "find_postgres",
    "probe_bindir",
]

ENV_BINDIR = "EVENTCORE_PG_BINDIR"
INSTALL_HINT = (
    "install it with `apt-get install postgresql` (Debian puts the programs in "
    f"/usr/lib/postgresql/NN/bin) or name its bin directory in ${ENV_BINDIR}"
)
SUPERUSER = "postgres"
# The OS user the server runs as when we are root.
RUN_AS = "postgres"
CLUSTER_NAME = "pgdata"
LOG_NAME = "postgres.log"
# initdb takes about a second; a loaded CI machine may take many more.
INITDB_TIMEOUT = 120.0

_VERSION_RE = re.compile(r"\(PostgreSQL\) (\d+(?:\.\d+)?)")


class PostgresNotFound(PostgresUnavailable):
    """No PostgreSQL server programs (``initdb`` and ``postgres``) where looked for."""


class PostgresStartError(PostgresUnavailable):
    """``initdb`` failed, or the server exited or did not accept connections in time.

    The message carries the end of the log.
    """

    def __init__(self, message: str, log_tail: str = "") -> None:
        self.log_tail = log_tail
        super().__init__(message)


@dataclass(frozen=True)
class PostgresBinaries:
    """A directory holding ``initdb`` and ``postgres``, and their version."""

    bindir: Path
    version: str

    def tool(self, name: str) -> str:
        """The path of one program in the directory."""
        return str(self.bindir / name)


def probe_bindir(path: str | Path) -> PostgresBinaries:
    """Check that ``path`` holds ``initdb`` and ``postgres`` and ask the server's version.

    Raises :class:`PostgresNotFound` saying what is missing.
    """
    bindir = Path(path)
    missing = [n for n in ("initdb", "postgres") if not os.access(bindir / n, os.X_OK)]
    if missing:
        raise PostgresNotFound(f"{bindir} has no {' or '.join(missing)} program")
    server = str(bindir / "postgres")
    try:
        out = subprocess.run(
            [server, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PostgresNotFound(f"{server}: cannot run `--version` ({exc})") from exc
    m = _VERSION_RE.search(out)
    if m is None:
        raise PostgresNotFound(f"{server}: not a PostgreSQL server (--version said {out!r})")
    return PostgresBinaries(bindir, m[1])


def _pg_config_bindir() -> str | None:
    pg_config = shutil.which("pg_config")
    if pg_config is None:
        return None
    try:
        out = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def _debian_bindirs() -> list[str]:
    # /usr/lib/postgresql/15/bin, /usr/lib/postgresql/16/bin...: the newest first.
    def major(bindir: str) -> int:
        name = Path(bindir).parent.name
        return int(name) if name.isdigit() else 0

    return sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=major, reverse=True)


def _path_bindir() -> str | None:
    initdb = shutil.which("initdb")
    # /usr/local/bin/initdb may be a link into the real bin directory, which
    # also holds `postgres`.
    return os.path.dirname(os.path.realpath(initdb)) if initdb else None


def find_postgres(bindir: str | Path | None = None) -> PostgresBinaries:
    """Find PostgreSQL's server programs.

    ``bindir`` (else ``$EVENTCORE_PG_BINDIR``) is used alone when given: a
    directory the user named is never silently swapped for another. Otherwise
    the candidates are ``pg_config --bindir``, Debian's
    ``/usr/lib/postgresql/*/bin`` (newest first), and the directory of
    ``initdb`` on PATH. Raises :class:`PostgresNotFound` saying what was tried.
    """
    chosen = bindir or os.environ.get(ENV_BINDIR)
    if chosen:
        try:
            return probe_bindir(chosen)
        except PostgresNotFound as exc:
            source = "argument" if bindir else f"${ENV_BINDIR}"
            raise PostgresNotFound(
                f"PostgreSQL bin directory from {source}: {exc}; {INSTALL_HINT}"
            ) from exc
    rejected: list[str] = []
    seen: set[str] = set()
    for candidate in (_pg_config_bindir(), *_debian_bindirs(), _path_bindir()):
        if candidate is None or os.path.realpath(candidate) in seen:
            continue
        seen.add(os.path.realpath(candidate))
        try:
            return probe_bindir(candidate)
        except PostgresNotFound as exc:
            rejected.append(str(exc))
    found = "; ".join(rejected) if rejected else "no pg_config, /usr/lib/postgresql or initdb"
    raise PostgresNotFound(f"no PostgreSQL server found ({found}); {INSTALL_HINT}")


@dataclass(frozen=True)
class PostgresConfig:
    """How to run one server.

    ``port=0`` takes a free port when the :class:`PostgresProcess` is made.
    ``fsync=False`` skips every flush to disk: a ``kill()`` of the server
    still loses nothing committed (the OS keeps the written pages), only a
    crash of the machine would; for test speed. ``settings`` are further
    server parameters (``-c name=value``), given last, so they override the
    defaults.
    """

    dir: Path
    port: int = 0
    fsync: bool = True
    database: str = "eventcore"
    settings: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Account:
    """The OS user PostgreSQL runs as when we are root."""

    uid: int
    gid: int
    groups: tuple[int, ...]

    def popen_args(self) -> dict[str, Any]:
        return {"user": self.uid, "group": self.gid, "extra_groups": list(self.groups)}


def _server_account() -> _Account | None:
    if os.geteuid() != 0:
        return None
    try:
        user = pwd.getpwnam(RUN_AS)
    except KeyError:
        raise PostgresUnavailable(
            f"PostgreSQL does not run as root, and there is no {RUN_AS!r} user to run it "
            f"as: create one (`useradd --system {RUN_AS}`; the Debian package does) or "
            "run as a normal user"
        ) from None
    return _Account(user.pw_uid, user.pw_gid, tuple(os.getgrouplist(RUN_AS, user.pw_gid)))


def _reachable(path: Path, account: _Account) -> bool:
    """Whether ``account`` may enter every directory above ``path`` (by mode bits)."""
    for parent in reversed(path.parents):
        st = parent.stat()
        if st.st_uid == account.uid:
            bit = stat.S_IXUSR
        elif st.st_gid in account.groups:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


class PostgresProcess:
    """A PostgreSQL server run as a child process.

    ``start()``, ``stop()`` (fast shutdown), ``kill()`` (SIGKILL, as a
    crash), ``restart()``, and ``close()`` (stop, and remove a cluster kept
    outside ``dir``); as a context manager it starts and closes. Raises
    :class:`PostgresNotFound` at once when PostgreSQL is not installed.
    """

    def __init__(self, config: PostgresConfig, binaries: PostgresBinaries | None = None) -> None:
        self.binaries = binaries if binaries is not None else find_postgres()
        self.config = replace(
            config,
            dir=Path(config.dir).resolve(),
            port=config.port or free_port(),
            settings=dict(config.settings),
        )
        self.log_path = self.config.dir / LOG_NAME
        self._account = _server_account()
        self._proc: subprocess.Popen[bytes] | None = None
        self._cluster: Path | None = None
        self._log_offset = 0

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while it runs (or until it is reaped)."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """True while the postmaster is alive (it may have crashed since ``start()``)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def port(self) -> int:
        return self.config.port

    @property
    def cluster_dir(self) -> Path | None:
        """The cluster's directory (PGDATA), once chosen by the first ``start()``."""
        return self._cluster

    @property
    def socket_dir(self) -> Path | None:
        """Where the unix socket is (the cluster directory), or None when that
        path is too long for a socket: then the server listens on TCP only."""
        cluster = self._cluster
        if cluster is None:
            return None
        socket = cluster / f".s.PGSQL.{self.port}"
        return cluster if len(os.fsencode(socket)) <= MAX_SOCKET_PATH else None

    @property
    def url(self) -> str:
        """``postgresql://postgres@127.0.0.1:PORT/eventcore`` (the configured database)."""
        return self.url_for(self.config.database)

    def url_for(self, database: str) -> str:
        """The URL of another database of this server."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{quote(database, safe='')}"

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()  # __exit__ will not run: a cluster made under /tmp goes now
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self, timeout: float = 30.0) -> str:
        """Start the server (making the cluster on first use) and wait until it
        accepts connections; return :attr:`url`.

        Raises :class:`PostgresStartError` with the end of the log if
        ``initdb`` fails, or the server exits or does not accept connections
        within ``timeout`` seconds (it is then killed). Crash recovery after
        a ``kill()`` happens inside that time.
        """
        if self.running:
            return self.url
        self.config.dir.mkdir(parents=True, exist_ok=True)
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        atexit.register(self.close)
        cluster = self._prepare_cluster()
        with open(self.log_path, "ab") as log:
            # A new session keeps a terminal's Ctrl-C away from the server. The
            # working directory is one the server's user can enter: initdb and
            # postgres return to it after finding their own program.
            proc = self._proc = subprocess.Popen(
                self._argv(cluster),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cluster,
                start_new_session=True,
                **self._as_server(),
            )
        deadline = time.monotonic() + timeout
        while not self._accepts(cluster):
            code = proc.poll()
            if code is not None:
                self._proc = None
                raise self._start_error(f"exited with code {code} while starting")
            if time.monotonic() > deadline:
                self.kill()
                raise self._start_error(f"did not accept connections within {timeout:g}s")
            time.sleep(0.05)
        if not self._has_database(self.config.database):
            self.create_database(self.config.database)
        return self.url

    def _as_server(self) -> dict[str, Any]:
        return self._account.popen_args() if self._account is not None else {}

    def _prepare_cluster(self) -> Path:
        if self._cluster is None:
            self._cluster = self._choose_cluster()
        if not (self._cluster / "PG_VERSION").exists():
            self._initdb(self._cluster)
        return self._cluster

    def _choose_cluster(self) -> Path:
        account, link = self._account, self.config.dir / CLUSTER_NAME
        if link.is_symlink() and link.resolve().is_dir():
            return link.resolve()  # kept outside by an earlier process on this dir
        if account is None or _reachable(self.config.dir, account):
            if link.is_symlink():
                link.unlink()  # to a cluster removed since
            link.mkdir(mode=0o700, exist_ok=True)
            if account is not None:
                os.chown(self.config.dir, account.uid, account.gid)
                os.chown(link, account.uid, account.gid)
            return link
        # Root, and the server's user cannot get to dir: a directory of its own
        # under /tmp (not $TMPDIR, which may be closed too), which also keeps the
        # socket path short.
        base = "/tmp" if os.path.isdir("/tmp") else None
        where = Path(tempfile.mkdtemp(prefix="ec-pg-", dir=base))
        os.chown(where, account.uid, account.gid)
        link.unlink(missing_ok=True)  # a link left to a removed cluster
        link.symlink_to(where)
        return where

    def _initdb(self, cluster: Path) -> None:
        initdb = self.binaries.tool("initdb")
        argv = [initdb, "-D", str(cluster), "-U", SUPERUSER, "--auth=trust"]
        argv += ["--encoding=UTF8", "--locale=C"]
        if not self.config.fsync:
            argv.append("--no-sync")
        with open(self.log_path, "ab") as log:
            try:
                code = subprocess.run(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=cluster,
                    timeout=INITDB_TIMEOUT,
                    check=False,
                    **self._as_server(),
                ).returncode
            except subprocess.TimeoutExpired:
                raise self._start_error(
                    f"(initdb) did not finish within {INITDB_TIMEOUT:g}s", initdb
                ) from None
        if code != 0:
            raise self._start_error(f"exited with code {code}", initdb)

    def _argv(self, cluster: Path) -> list[str]:
        socket_dir = self.socket_dir
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(socket_dir) if socket_dir is not None else "",
            "fsync": "on" if self.config.fsync else "off",
        }
        settings |= self.config.settings
        argv = [self.binaries.tool("postgres"), "-D", str(cluster)]
        for name, value in settings.items():
            argv += ["-c", f"{name}={value}"]
        return argv

    def _accepts(self, cluster: Path) -> bool:
        try:
            with psycopg.connect(self.url_for("postgres"), connect_timeout=2) as conn:
                found = conn.execute("SHOW data_directory").fetchone()
        except psycopg.OperationalError:
            # Refused, or "the database system is starting up" (crash recovery).
            return False
        # Another server may have taken the port since free_port() saw it free;
        # then ours exits, and this must not pass for it meanwhile.
        return found is not None and Path(found[0]) == cluster

    def _connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.url_for("postgres"), autocommit=True, connect_timeout=5)

    def _has_database(self, name: str) -> bool:
        with self._connect() as conn:
            found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            return found.fetchone() is not None

    def create_database(self, name: str) -> str:
        """``CREATE DATABASE name``; return its URL."""
        with self._connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        """``DROP DATABASE IF EXISTS name``, ending its open sessions first
        (``WITH (FORCE)``, PostgreSQL 13 and newer)."""
        with self._connect() as conn:
            force = " WITH (FORCE)" if conn.info.server_version >= 130000 else ""
            query = sql.SQL("DROP DATABASE IF EXISTS {}" + force)
            conn.execute(query.format(sql.Identifier(name)))

    def _start_error(self, what: str, program: str | None = None) -> PostgresStartError:
        tail = self.log_tail()
        program = program or self.binaries.tool("postgres")
        return PostgresStartError(
            f"{program} {what}; log {self.log_path}, last lines:\n{tail}", tail
        )

    def log_tail(self, lines: int = 15) -> str:
        """The last lines logged (by initdb and the server) since the latest ``start()``."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_offset)
                text = f.read().decode(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown: sessions end, open transactions roll back, a
        checkpoint is written. SIGKILL (as :meth:`kill`) after ``timeout``."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _kill_server(proc)

    def kill(self) -> None:
        """SIGKILL the server, as a crash would: the postmaster and every
        process it started. The next ``start()`` recovers from the WAL."""
        proc, self._proc = self._proc, None
        if proc is not None:
            _kill_server(proc)

    def restart(self, timeout: float = 30.0) -> str:
        """Stop (if running) and start again on the same cluster and port."""
        self.stop(timeout)
        return self.start(timeout)

    def close(self) -> None:
        """Stop the server, and remove its cluster if it lives outside ``dir``
        (see the module's docstring). Safe to call more than once."""
        atexit.unregister(self.close)
        self.stop()
        cluster, link = self._cluster, self.config.dir / CLUSTER_NAME
        if cluster is not None and cluster != link:
            shutil.rmtree(cluster, ignore_errors=True)
            link.unlink(missing_ok=True)
            self._cluster = None


def _kill_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    # Each backend runs in a session of its own (postgres makes its children
    # group leaders), so a signal to the postmaster's group misses them; they
    # are found by parent pid. Stopped, the postmaster forks no more meanwhile.
    # Backends left alive would keep the shared memory in use, and the next
    # postmaster would refuse to start.
    proc.send_signal(signal.SIGSTOP)
    children = _children(proc.pid)
    proc.kill()
    proc.wait()
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.01)


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state, ppid, ...)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rpartition(")")[2].split()


def _children(ppid: int) -> list[int]:
    """The pids whose parent is ``ppid``, from /proc (Linux); empty without /proc."""
    try:
        pids = [int(e.name) for e in os.scandir("/proc") if e.name.isdigit()]
    except OSError:
        return []
    return [pid for pid in pids if (fields := _proc_stat(pid)) and int(fields[1]) == ppid]


def _alive(pid: int) -> bool:
    # A zombie has let go of its memory; whoever inherited it reaps it.
    fields = _proc_stat(pid)
    return fields is not None and fields[0] != "Z"
