"""Running ``eventcore redis|up --listen`` as a real process and reading the
URLs it prints."""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

JOIN_RE = re.compile(r"REDIS_URL='([^']+)' eventcore worker --gpu")


def start_cli(
    *args: str, env: dict[str, str], cwd: Path, prefix: Sequence[str] = ()
) -> subprocess.Popen[str]:
    """``eventcore ARGS`` with only the given ``EVENTCORE_*`` variables, its
    stdout a pipe (``prefix``, e.g. ``ip netns exec NS``, runs it elsewhere)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTCORE_")}
    full_env.pop("REDIS_URL", None)
    full_env.update(env)
    return subprocess.Popen(
        [*prefix, sys.executable, "-m", "eventcore.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
        cwd=cwd,
        start_new_session=True,
    )


def _lines(proc: subprocess.Popen[str]) -> queue.Queue[str | None]:
    # A thread reads the lines: a selector on a buffered text pipe misses
    # lines already in the buffer.
    lines = getattr(proc, "_listenkit_lines", None)
    if lines is None:
        lines = queue.Queue()
        proc._listenkit_lines = lines  # type: ignore[attr-defined]

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.put(line.rstrip("\n"))
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
    return lines


def read_until(proc: subprocess.Popen[str], pattern: re.Pattern[str], timeout: float) -> list[str]:
    """The stdout lines of ``proc`` up to the first matching ``pattern``;
    fails if it exits or takes longer than ``timeout``."""
    source = _lines(proc)
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no line matching {pattern.pattern!r} in {timeout}s: {seen}")
        try:
            line = source.get(timeout=left)
        except queue.Empty:
            continue
        if line is None:
            raise AssertionError(f"exited ({proc.wait(5)}) after {seen}")
        seen.append(line)
        if pattern.search(line):
            return seen


def join_url(lines: Sequence[str]) -> str:
    """The URL of the ``REDIS_URL=... eventcore worker --gpu`` line."""
    for line in lines:
        if m := JOIN_RE.search(line):
            return m[1]
    raise AssertionError(f"no join line in {lines}")


def stop(proc: subprocess.Popen[str], timeout: float = 30) -> tuple[int, str]:
    """SIGINT (Ctrl-C), then its exit code and stderr; SIGKILL if it hangs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    err = proc.stderr.read() if proc.stderr else ""
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()
    return proc.returncode, err


AUTH_REFUSALS = (
    "NOAUTH",
    "WRONGPASS",
    "invalid username-password pair",
    "must be called with the client already authenticated",
)


def refused_for_auth(message: str) -> bool:
    """Whether a Redis error is the server asking for (valid) credentials."""
    return any(words in message for words in AUTH_REFUSALS)


def openssl_cert(where: Path, ips: Sequence[str]) -> tuple[Path, Path] | None:
    """A self-signed certificate for ``ips`` (its own CA) and its key, made
    with the ``openssl`` command; None without one."""
    tool = shutil.which("openssl")
    if tool is None:
        return None
    cert, key = where / "cert.pem", where / "key.pem"
    san = ",".join(f"IP:{ip}" for ip in ips)
    subprocess.run(
        [
            *(tool, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=eventcore-test"),
            *("-addext", f"subjectAltName={san}"),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key
