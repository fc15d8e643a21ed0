"""``eventcore up`` and its supervisor: the restart policy, a killed role
coming back while ``up`` keeps running, the web address shown only once the
system can serve it, and the ``up`` options reaching the roles."""

from __future__ import annotations

import base64
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from eventcore.cli.stack import RestartPolicy, describe_exit
from eventcore.server.process import free_port

# -- the policy, without processes ----------------------------------------------------


def test_restart_delays_double_up_to_the_cap_and_start_over_after_a_good_run() -> None:
    policy = RestartPolicy(base=0.5, cap=4.0, stable_after=30.0)
    streak, delays = 0, []
    for _ in range(6):
        delay, streak = policy.after_exit(streak, uptime=1.0)
        delays.append(delay)
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    delay, streak = policy.after_exit(streak, uptime=30.0)  # it ran long enough
    assert (delay, streak) == (0.5, 1)


def test_exit_codes_name_the_signal() -> None:
    assert describe_exit(1) == "exit code 1"
    assert describe_exit(-9) == "exit code -9 (SIGKILL)"


# -- eventcore up as a process ----------------------------------------------------------


class Up:
    """``eventcore up`` running in ``cwd``; its output read by threads as it comes."""

    def __init__(self, cwd: Path, *args: str, env: dict[str, str] | None = None) -> None:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTCORE_")}
        full_env.pop("REDIS_URL", None)
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "eventcore.cli", "up", *args],
            cwd=cwd,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._lines: queue.Queue[str] = queue.Queue()
        self._readers = [
            threading.Thread(target=self._read, args=(stream, into), daemon=True)
            for stream, into in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream, into: list[str]) -> None:  # type: ignore[no-untyped-def]
        for line in stream:
            into.append(line)
            if into is self.out:
                self._lines.put(line)

    def wait_line(self, prefix: str, timeout: float = 90) -> str:
        """The first stdout line (stripped) starting with ``prefix``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "".join(self.err)
            try:
                line = self._lines.get(timeout=0.2).strip()
            except queue.Empty:
                continue
            if line.startswith(prefix):
                return line
        raise AssertionError(f"no line {prefix!r} within {timeout}s:\n{''.join(self.out)}")

    def wait_err(self, words: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while words not in "".join(self.err):
            assert time.monotonic() < deadline, f"no {words!r} in:\n{''.join(self.err)}"
            time.sleep(0.05)

    def children(self) -> dict[int, str]:
        """pid -> command line of every live child of ``up``."""
        out = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if fields[0] != "Z" and int(fields[1]) == self.proc.pid:
                out[int(entry.name)] = cmdline
        return out

    def role_pid(self, role: str, *, not_pid: int | None = None, timeout: float = 30) -> int:
        """The pid of the live child running ``eventcore.cli <role>``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for pid, cmdline in self.children().items():
                if f"eventcore.cli {role}" in cmdline and pid != not_pid:
                    return pid
            time.sleep(0.05)
        raise AssertionError(f"no {role} child of up within {timeout}s: {self.children()}")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.stop_wait()

    def stop_wait(self) -> int:
        """Wait for ``up`` to end (60 s at most) and finish reading its output."""
        code = self.proc.wait(60)
        for reader in self._readers:
            reader.join(10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        return code


def png_b64(arr: np.ndarray) -> str:
    return base64.b64encode(cv2.imencode(".png", arr)[1].tobytes()).decode()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_killed_role_is_restarted_and_up_keeps_running(tmp_path: Path) -> None:
    """A role that died used to end `eventcore up` ("a role exited") and stop
    everything; now it is restarted and the system serves again."""
    port = free_port()
    up = Up(tmp_path, "--port", str(port))
    base = f"http://127.0.0.1:{port}"
    try:
        up.wait_line("web: http://")
        with httpx.Client(base_url=base, timeout=30) as c:
            projector = up.role_pid("project")
            os.kill(projector, signal.SIGKILL)
            up.wait_err(f"projector (pid {projector}) exited with exit code -9 (SIGKILL)")
            again = up.role_pid("project", not_pid=projector)
            up.wait_err(f"projector restarted (pid {again}")
            # The new projector folds: a task's end reaches its view.
            task = c.post("/v1/tasks", json={"kind": "noop"}).json()["task_id"]
            deadline = time.monotonic() + 60
            while c.get(f"/v1/tasks/{task}").json().get("status") != "succeeded":
                assert time.monotonic() < deadline, "the restarted projector folds nothing"
                time.sleep(0.1)

            web = up.role_pid("web")
            os.kill(web, signal.SIGKILL)
            up.wait_err(f"web (pid {web}) exited with exit code -9 (SIGKILL)")
            assert up.role_pid("web", not_pid=web) != web
            deadline = time.monotonic() + 60
            while True:
                try:
                    if c.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "the web app did not come back"
                time.sleep(0.1)
            assert up.proc.poll() is None
    finally:
        code = up.stop()
    assert code == 0, "".join(up.err)
    assert "eventcore stopped" in "".join(up.out)
    assert "Traceback" not in "".join(up.out + up.err)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_the_address_is_shown_once_a_request_to_it_is_served(tmp_path: Path) -> None:
    """`eventcore up` printed the web address right after starting the roles,
    before the web app listened or a worker had announced itself, so the first
    request a user made could fail. Now the line comes once /readyz is 200:
    an inpaint sent the moment it appears completes. The `up` options reach
    the roles: host and port, two workers with four slots each, and --config
    given after the command."""
    port = free_port()
    config = tmp_path / "eventcore.toml"
    config.write_text(f'namespace = "upopts"\n[redis]\ndata_dir = "{tmp_path / "data"}"\n')
    up = Up(
        tmp_path,
        *("--host", "127.0.0.1", "--port", str(port), "--workers", "2", "--concurrency", "4"),
        *("--config", str(config)),
    )
    try:
        line = up.wait_line("web: http://")
        assert line.startswith(f"web: http://127.0.0.1:{port} ")
        img = np.full((40, 48, 3), (40, 120, 200), np.uint8)
        mask = np.zeros((40, 48), np.uint8)
        mask[10:30, 10:30] = 255
        r = httpx.post(
            f"http://127.0.0.1:{port}/api/v1/inpaint",
            json={"image": png_b64(img), "mask": png_b64(mask), "hd_strategy": "Original"},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "image/png"

        workers = {pid: c for pid, c in up.children().items() if "eventcore.cli worker" in c}
        assert len(workers) == 2 and all("--concurrency 4" in c for c in workers.values())
        deadline = time.monotonic() + 60
        while True:
            nodes = httpx.get(f"http://127.0.0.1:{port}/v1/nodes").json()["nodes"]
            if len(nodes) == 2:
                break
            assert time.monotonic() < deadline, nodes
            time.sleep(0.1)
        assert [n["concurrency"] for n in nodes] == [4, 4]
        assert (tmp_path / "data" / "appendonlydir").is_dir()  # the file's data_dir
        assert not (tmp_path / ".eventcore").exists()
    finally:
        code = up.stop()
    assert code == 0, "".join(up.err)
    out = "".join(up.out)
    assert " worker-1 | " in out and " worker-2 | " in out


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_up_says_what_is_missing_when_it_never_gets_ready(tmp_path: Path) -> None:
    """A worker that can serve no queue exits; it is restarted with growing
    delays, /readyz never becomes 200, and `up` says why instead of showing
    an address that cannot serve."""
    up = Up(
        tmp_path,
        *("--port", str(free_port()), "--ready-timeout", "3"),
        env={"EVENTCORE_WORKER__QUEUES": "gpu-high", "EVENTCORE_WORKER__GPU": "off"},
    )
    try:
        up.wait_err("eventcore: not ready after ", timeout=90)
        up.wait_err("no live node serves a queue")
        up.wait_err("worker (pid", timeout=60)
        up.wait_err("exited with exit code 1", timeout=60)
        up.wait_err("worker restarted (pid", timeout=60)
        assert up.proc.poll() is None
        assert not any(line.strip().startswith("web: http://") for line in up.out)
    finally:
        code = up.stop()
    assert code == 0, "".join(up.err)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_up_stops_everything_when_its_redis_dies(tmp_path: Path) -> None:
    """Roles are restarted; the embedded Redis is not: every role needs it,
    so its death ends `up` with an error that says so, and no role is left."""
    up = Up(tmp_path, "--port", str(free_port()))
    up.wait_line("web: http://")
    server = next(p for p, c in up.children().items() if "eventcore.cli" not in c)
    roles = [p for p, c in up.children().items() if "eventcore.cli" in c]
    os.kill(server, signal.SIGKILL)
    code = up.stop_wait()
    err = "".join(up.err)
    assert code == 1, err
    assert f"the embedded Redis in {tmp_path / '.eventcore'} exited" in err
    assert "every role needs it" in err
    for pid in roles:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
