"""The README's five-minute tour, run literally: its shell blocks are read from
README.md (so the docs cannot drift from what works) and run with bash in an
empty directory, as a new user would, against ``eventcore up``.

Only what a user would change is changed: the web port is a free one instead
of 8000, ``.venv/bin/`` is this environment's, set-up is already done, and
``<task_id from above>`` is the id the submit printed. Terminal 2 (the live
feed) runs in the background and must show the task going to ``succeeded``;
the rebuild and verify must leave the whole stack running."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from eventcore.server.process import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

README = Path(__file__).resolve().parent.parent / "README.md"


def tour_blocks(text: str) -> list[str]:
    """The ```sh blocks of the README's tour section, in order."""
    start = text.index("## A five-minute tour")
    end = text.index("\n## ", start + 1)
    return re.findall(r"```sh\n(.*?)```", text[start:end], flags=re.S)


class Output:
    """A process's output collected line by line in the background."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.append(line)

    def join(self) -> None:
        self._thread.join(10)

    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, proc: subprocess.Popen[str], timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if m := re.search(pattern, self.text()):
                return m
            assert proc.poll() is None, f"exited ({proc.returncode}):\n{self.text()[-3000:]}"
            time.sleep(0.1)
        raise AssertionError(f"no {pattern!r} within {timeout}s:\n{self.text()[-3000:]}")


def test_readme_tour(tmp_path: Path) -> None:
    blocks = tour_blocks(README.read_text())
    up_block, feed_block, submit_block, fetch_block, history_block, rebuild_block = blocks
    port = free_port()
    venv_bin = str(Path(sys.executable).parent) + "/"

    def literal(block: str) -> str:
        block = block.replace("./scripts/setup && ", "").replace(".venv/bin/", venv_bin)
        return block.replace("127.0.0.1:8000", f"127.0.0.1:{port}")

    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTCORE_")}
    env.pop("REDIS_URL", None)
    env["EVENTCORE_WEB__PORT"] = str(port)
    env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")

    def start(block: str) -> tuple[subprocess.Popen[str], Output]:
        proc = subprocess.Popen(
            ["bash", "-c", literal(block)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        return proc, Output(proc)

    def run(block: str, **subs: str) -> str:
        script = literal(block)
        for name, value in subs.items():
            script = script.replace(name, value)
        done = subprocess.run(
            ["bash", "-e", "-c", script],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert done.returncode == 0, (
            f"{script}\nexit {done.returncode}:\n{done.stdout}{done.stderr}"
        )
        return done.stdout

    # Terminal 1: the stack; the user waits for the address it prints.
    up, up_out = start(up_block)
    feed = feed_out = None
    try:
        # The address line of `up` itself, shown once /readyz is 200 (the web
        # role's own "listening on" line comes earlier, before it can serve).
        up_out.wait_for(rf"(?m)^\s*web: http://127\.0\.0\.1:{port}\s", up, timeout=120)
        # Terminal 2: the live feed.
        feed, feed_out = start(feed_block)
        # Terminal 3: make the images and submit.
        printed = run(submit_block)
        task_id = json.loads(printed.strip().splitlines()[-1])["task_id"]
        feed_out.wait_for(rf'"task_id":\s*"{task_id}".*"status":\s*"succeeded"', feed, timeout=60)
        out = run(fetch_block, **{"<task_id from above>": task_id})
        assert (tmp_path / "out.png").read_bytes().startswith(b"\x89PNG"), out
        assert task_id in out and "succeeded" in out
        # The SQL history has it a moment after the views do.
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            deadline = time.monotonic() + 30
            while task_id not in client.get("/v1/history/tasks").text:
                assert time.monotonic() < deadline, "the SQL history never got the task"
                time.sleep(0.2)
        out = run(history_block)
        assert out.count(task_id) >= 2 and "inpaint" in out, out  # the API and the table
        run(rebuild_block)
        # Nothing stopped: the stack still runs, and a new task still ends.
        assert up.poll() is None, up_out.text()[-3000:]
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            sub = client.post("/v1/tasks", json={"kind": "noop", "params": {}})
            assert sub.status_code == 202, sub.text
            again = sub.json()
            view = client.get(f"/v1/tasks/{again['task_id']}", params={"after": again["event_id"]})
            deadline = time.monotonic() + 30
            while view.json().get("status") != "succeeded":
                assert time.monotonic() < deadline, view.text
                time.sleep(0.2)
                view = client.get(f"/v1/tasks/{again['task_id']}")
        assert "Traceback" not in up_out.text(), up_out.text()[-5000:]
    finally:
        for proc in (feed, up):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(10)
        for proc, out in ((feed, feed_out), (up, up_out)):
            if proc is not None:
                out.join()
                assert proc.stdout is not None
                proc.stdout.close()
    assert up.returncode == 0, up_out.text()[-3000:]
    assert "eventcore stopped." in up_out.text()
