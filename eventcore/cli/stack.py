"""Running the roles of ``eventcore up`` as child processes on one machine.

Each role is ``python -m eventcore.cli <role>`` in its own session (so a
Ctrl-C in the terminal reaches only ``up``, which then stops the roles in
order), with ``REDIS_URL`` pointing at the stack's Redis. Their output is
interleaved line by line with a role prefix.

A role that exits is started again after a delay that doubles with every
exit in a row, up to a cap, and starts over once the role has stayed up a
while (:class:`RestartPolicy`): one crash costs half a second, a role that
cannot start at all is retried every half minute instead of in a tight loop.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO

__all__ = ["Readiness", "RestartPolicy", "Role", "Stack", "describe_exit", "probe_ready"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RestartPolicy:
    """How long to wait before starting a role that exited again.

    The ``n``-th exit in a row waits ``base * 2**(n-1)`` seconds, at most
    ``cap``; a role that ran ``stable_after`` seconds or more before it exited
    starts a new streak (its next restart waits ``base`` again).
    """

    base: float = 0.5
    cap: float = 30.0
    stable_after: float = 30.0

    def after_exit(self, streak: int, uptime: float) -> tuple[float, int]:
        """The delay before the restart and the new streak, given the streak
        of exits so far and how long the role ran this time."""
        if uptime >= self.stable_after:
            streak = 0
        return min(self.cap, self.base * 2.0**streak), streak + 1


def describe_exit(code: int | None) -> str:
    """``exit code 1`` or ``exit code -9 (SIGKILL)``."""
    if code is not None and code < 0:
        try:
            return f"exit code {code} ({signal.Signals(-code).name})"
        except ValueError:
            pass
    return f"exit code {code}"


class Role:
    """One role process and the thread copying its output."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str]) -> None:
        self.name = name
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "eventcore.cli", *argv],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            text=True,
            bufsize=1,
        )
        self._copier = threading.Thread(target=self._copy, args=(self.proc.stdout,), daemon=True)
        self._copier.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _copy(self, stream: IO[str] | None) -> None:
        if stream is None:
            return
        for line in stream:
            sys.stdout.write(f"{self.name:>9} | {line}")
            sys.stdout.flush()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace: float) -> int:
        """SIGTERM, then SIGKILL after ``grace`` seconds; returns the exit code."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop within %.0fs: killed", self.name, grace)
                self.proc.kill()
                self.proc.wait(5)
        self._copier.join(2)
        return self.proc.returncode


@dataclass
class _Slot:
    """A role the stack keeps running: how to start it, its current process,
    and its restart bookkeeping."""

    name: str
    argv: tuple[str, ...]
    role: Role
    streak: int = 0
    restart_at: float | None = None
    restarts: int = 0


class Stack:
    """The roles of one machine: started together, restarted when they exit
    (see :class:`RestartPolicy`), stopped in reverse order."""

    def __init__(
        self,
        redis_url: str,
        config: str | None,
        policy: RestartPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.env = {**os.environ, "REDIS_URL": redis_url}
        if config:
            self.env["EVENTCORE_CONFIG"] = os.path.abspath(config)
        self.policy = policy or RestartPolicy()
        self.clock = clock
        self._slots: list[_Slot] = []

    @property
    def roles(self) -> list[Role]:
        """The current process of every role, in start order."""
        return [s.role for s in self._slots]

    def role(self, name: str) -> Role:
        """The current process of the role ``name``."""
        return next(s.role for s in self._slots if s.name == name)

    def start(self, name: str, *argv: str) -> Role:
        slot = _Slot(name, argv, Role(name, argv, self.env))
        self._slots.append(slot)
        return slot.role

    def dead(self) -> list[Role]:
        return [r for r in self.roles if not r.alive()]

    def supervise(self) -> None:
        """One pass: notice roles that exited (logged with their exit code and
        when they will be restarted) and restart those whose delay is over."""
        now = self.clock()
        for slot in self._slots:
            if slot.restart_at is None:
                if slot.role.alive():
                    continue
                uptime = now - slot.role.started_at
                delay, slot.streak = self.policy.after_exit(slot.streak, uptime)
                slot.restart_at = now + delay
                logger.warning(
                    "%s (pid %d) exited with %s after %.1fs; restarting in %.1fs",
                    slot.name,
                    slot.role.pid,
                    describe_exit(slot.role.proc.returncode),
                    uptime,
                    delay,
                )
            elif now >= slot.restart_at:
                slot.role.stop(0)  # reaps it and finishes copying its last lines
                slot.role = Role(slot.name, slot.argv, self.env)
                slot.restart_at = None
                slot.restarts += 1
                logger.warning(
                    "%s restarted (pid %d, restart %d)", slot.name, slot.role.pid, slot.restarts
                )

    def stop(self, grace: float) -> None:
        """Stop every role, last started first, all within about ``grace``
        seconds: each gets what is left of it, but at least ``MIN_STOP``
        seconds, so the roles after a slow one still stop cleanly."""
        deadline = self.clock() + grace
        for slot in reversed(self._slots):
            slot.role.stop(max(MIN_STOP, deadline - self.clock()))


MIN_STOP = 2.0


# -- readiness -------------------------------------------------------------------------


@dataclass(frozen=True)
class Readiness:
    """What one look at ``/readyz`` found."""

    ready: bool
    detail: str


def probe_ready(url: str, timeout: float = 2.0) -> Readiness:
    """GET ``url`` (the web role's ``/readyz``): ready on 200, otherwise why not,
    in the words of its ``detail`` (or of the connection error)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return Readiness(resp.status == 200, f"HTTP {resp.status}")
    except urllib.error.HTTPError as exc:
        try:
            detail = json.loads(exc.read()).get("detail") or f"HTTP {exc.code}"
        except (ValueError, AttributeError):
            detail = f"HTTP {exc.code}"
        return Readiness(False, str(detail))
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return Readiness(False, f"the web app does not answer ({reason})")
