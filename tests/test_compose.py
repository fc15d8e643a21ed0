"""compose.yaml and the Dockerfile agree with the code they run.

Docker is not needed: the file is parsed and every service's command is
handed to the real ``eventcore`` argument parser, so a renamed command or flag
fails here rather than in a container that restarts forever.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from eventcore.cli.main import build_parser
from eventcore.config import Settings

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read compose.yaml")

ROOT = Path(__file__).resolve().parent.parent
REDIS_URL = "redis://redis:6379/0"
WORKERS = ("cpu-worker", "gpu-worker")


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return compose["services"]


def roles(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in services.items() if name != "redis"}


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the KEY=VALUE list form
        return dict(item.partition("=")[::2] for item in env)
    return {k: str(v) for k, v in env.items()}


def seconds(duration: str) -> float:
    """A compose duration (``45s``, ``1m30s``, ``1h``) in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s|us)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}
    return sum(float(n) * scale[u] for n, u in parts)


def test_the_roles_are_there(services: dict[str, dict[str, Any]]) -> None:
    assert {"redis", "web", "projector", "cpu-worker", "gpu-worker"} <= set(services)


def test_every_role_runs_the_same_image(services: dict[str, dict[str, Any]]) -> None:
    built = {(repr(s.get("build")), s.get("image")) for s in roles(services).values()}
    assert len(built) == 1, built
    ((build, image),) = built
    assert build != "None" and image


def test_every_role_reads_redis_url_and_waits_for_a_healthy_redis(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in roles(services).items():
        assert environment(service).get("REDIS_URL") == REDIS_URL, name
        assert service["depends_on"]["redis"]["condition"] == "service_healthy", name
        assert service.get("restart"), name


def test_redis_keeps_an_append_only_file_and_has_a_healthcheck(
    services: dict[str, dict[str, Any]],
) -> None:
    redis = services["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--appendfsync") + 1] in ("everysec", "always")
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert "redis-cli" in redis["healthcheck"]["test"]
    assert any(v.endswith(":/data") for v in redis["volumes"])


def test_workers_are_given_time_to_drain(services: dict[str, dict[str, Any]]) -> None:
    grace = Settings().worker.shutdown_grace
    for name in WORKERS:
        assert seconds(services[name]["stop_grace_period"]) > grace, name


@pytest.mark.parametrize("name", ["web", "projector", "cpu-worker", "gpu-worker"])
def test_commands_are_eventcore_commands(services: dict[str, dict[str, Any]], name: str) -> None:
    """The image's entrypoint is ``eventcore``, so each command is its arguments."""
    args = build_parser().parse_args(services[name]["command"])
    expected = {"web": "web", "projector": "project"}.get(name, "worker")
    assert args.command == expected
    if name == "web":
        assert args.host == "0.0.0.0"
        published = [str(p).rsplit(":", 1)[-1] for p in services[name]["ports"]]
        assert str(Settings().web.port) in published
    if name == "cpu-worker":
        assert args.gpu == "off"
    if name == "gpu-worker":
        assert args.gpu == "on"


def test_the_gpu_worker_is_optional_and_reserves_a_gpu(
    services: dict[str, dict[str, Any]],
) -> None:
    gpu = services["gpu-worker"]
    assert gpu["profiles"] == ["gpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    for name, service in services.items():
        if name != "gpu-worker":
            assert "profiles" not in service, name


def test_web_healthcheck_asks_healthz(services: dict[str, dict[str, Any]]) -> None:
    check = " ".join(services["web"]["healthcheck"]["test"])
    assert "/healthz" in check and f":{Settings().web.port}/" in check


def test_the_image_runs_eventcore() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r'^ENTRYPOINT \["eventcore"\]$', dockerfile, re.MULTILINE)
    assert re.search(r"^USER (?!root)\S+$", dockerfile, re.MULTILINE)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", ".eventcore"} <= set(ignored)
