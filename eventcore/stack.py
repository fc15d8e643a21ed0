"""Running the roles of ``eventcore up`` as child processes on one machine.

Each role is ``python -m eventcore.cli <role>`` in its own session (so a
Ctrl-C in the terminal reaches only ``up``, which then stops the roles in
order), with ``REDIS_URL`` pointing at the stack's Redis. Their output is
interleaved line by line with a role prefix.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import IO

__all__ = ["Role", "Stack"]


class Role:
    """One role process and the thread copying its output."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str]) -> None:
        self.name = name
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
                self.proc.kill()
                self.proc.wait(5)
        self._copier.join(2)
        return self.proc.returncode


class Stack:
    """The roles of one machine, started together and stopped in reverse."""

    def __init__(self, redis_url: str, config: str | None) -> None:
        self.env = {**os.environ, "REDIS_URL": redis_url}
        if config:
            self.env["EVENTCORE_CONFIG"] = os.path.abspath(config)
        self.roles: list[Role] = []

    def start(self, name: str, *argv: str) -> Role:
        role = Role(name, argv, self.env)
        self.roles.append(role)
        return role

    def dead(self) -> list[Role]:
        return [r for r in self.roles if not r.alive()]

    def stop(self, grace: float) -> None:
        for role in reversed(self.roles):
            role.stop(grace)
