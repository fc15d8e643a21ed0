"""End to end: ``eventcore up`` as a user runs it (embedded Redis, web app,
projector, one CPU worker), a real inpaint submitted over HTTP, followed over
SSE to completion, the PNG downloaded and compared with a direct
``cv2.inpaint``; then Ctrl-C (SIGINT) stops everything cleanly. Once more
with ``REDIS_URL`` naming a Redis Cluster."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from eventcore.server.process import free_port


def _wait_healthy(base: str, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "eventcore up exited early"
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{base} did not become healthy within {timeout}s")


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_up_inpaint_over_http_followed_over_sse(tmp_path: Path) -> None:
    _inpaint_over_http(tmp_path, {})


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_up_on_a_redis_cluster_inpaint_over_http(tmp_path: Path, cluster_url: str) -> None:
    """The same on a Redis Cluster of three masters, three partitions, nothing
    said about the cluster: the web app, the worker (and the child process
    that reads the image and writes the result) and the projector find it."""
    _inpaint_over_http(tmp_path, {"REDIS_URL": cluster_url, "EVENTCORE_PARTITIONS": "3"})


def _inpaint_over_http(tmp_path: Path, extra_env: dict[str, str]) -> None:
    img = np.zeros((60, 80, 3), np.uint8)
    img[:, :40] = (200, 30, 30)
    cv2.putText(img, "ec", (30, 40), cv2.FONT_HERSHEY_SIMPLEX, 1, (255, 255, 255), 2)
    mask = np.zeros((60, 80), np.uint8)
    mask[20:40, 30:50] = 255
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTCORE_")}
    env.pop("REDIS_URL", None)
    env["EVENTCORE_WEB__PORT"] = str(port)
    env.update(extra_env)
    proc = subprocess.Popen(
        [sys.executable, "-m", "eventcore.cli", "up"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(base, proc)
        with httpx.Client(base_url=base, timeout=30) as c:
            # Wait for the worker to announce itself, so routing sees it.
            deadline = time.monotonic() + 30
            while not c.get("/v1/nodes").json()["nodes"]:
                assert time.monotonic() < deadline, "no worker appeared"
                time.sleep(0.2)
            with c.stream("GET", "/v1/stream", params={"entity": "task"}) as feed:
                sub = c.post(
                    "/v1/tasks",
                    data={"kind": "inpaint", "params": json.dumps({"hd_strategy": "Original"})},
                    files={
                        "image": ("in.png", cv2.imencode(".png", img)[1].tobytes(), "image/png"),
                        "mask": ("mask.png", cv2.imencode(".png", mask)[1].tobytes(), "image/png"),
                    },
                )
                assert sub.status_code == 202, sub.text
                task_id = sub.json()["task_id"]
                statuses: list[str] = []
                data: dict = {}
                for line in feed.iter_lines():
                    if line.startswith("data:"):
                        data = json.loads(line[5:])
                        if data["id"] == task_id:
                            statuses.append(data["status"])
                            if data["status"] in ("succeeded", "failed", "dead_lettered"):
                                break
            assert statuses[-1] == "succeeded", (statuses, data)
            assert statuses[0] == "queued" and "running" in statuses
            png = c.get(f"/v1/tasks/{task_id}/result")
            assert png.status_code == 200 and png.headers["content-type"] == "image/png"
            out = cv2.imdecode(np.frombuffer(png.content, np.uint8), cv2.IMREAD_COLOR)
            assert np.array_equal(out, cv2.inpaint(img, mask, 4, cv2.INPAINT_NS))
            history = c.get(f"/v1/tasks/{task_id}/events").json()
            assert history[0]["event"]["type"] == "task.submitted"
            assert history[-1]["event"]["type"] == "task.succeeded"
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert f"web: http://127.0.0.1:{port}" in out
    assert "eventcore stopped" in out
    assert "Traceback" not in out + err
