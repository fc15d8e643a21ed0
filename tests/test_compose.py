"""compose.yaml and the Dockerfile agree with the code they run.

Docker is not needed: the file is parsed and every service's command is
handed to the real ``eventcore`` argument parser, so a renamed command or flag
fails here rather than in a container that restarts forever. The same for the
``cluster`` profile: its nodes, the one-shot service that joins them, and the
roles' settings as eventcore's own config loader reads them.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from eventcore.cli.main import build_parser
from eventcore.config import Settings, load_settings

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read compose.yaml")

ROOT = Path(__file__).resolve().parent.parent
REDIS_URL = "redis://redis:6379/0"
WORKERS = ("cpu-worker", "gpu-worker", "cluster-worker")
NODES = ("redis-1", "redis-2", "redis-3")
CLUSTER_ROLES = {
    "cluster-web": "web",
    "cluster-projector": "projector",
    "cluster-worker": "cpu-worker",
}


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return compose["services"]


def roles(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The services that run eventcore (built from the Dockerfile), not Redis."""
    return {name: s for name, s in services.items() if "build" in s}


def single_server_roles(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in roles(services).items() if "cluster" not in s.get("profiles", ())}


def option(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


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
    assert {"redis", "web", "projector", "sql", "postgres", "cpu-worker", "gpu-worker"} <= set(
        services
    )
    assert {*NODES, "cluster-init", *CLUSTER_ROLES} <= set(services)


def test_every_role_runs_the_same_image(services: dict[str, dict[str, Any]]) -> None:
    built = {(repr(s.get("build")), s.get("image")) for s in roles(services).values()}
    assert len(built) == 1, built
    ((build, image),) = built
    assert build != "None" and image


def test_every_role_reads_redis_url_and_waits_for_a_healthy_redis(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in single_server_roles(services).items():
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


def test_the_sql_projector_writes_to_the_postgres_service(
    services: dict[str, dict[str, Any]],
) -> None:
    """The roles of one server share the SQL URL (the web app reads the
    history the SQL projector writes); it names the postgres service, with
    its user, password and database; the SQL projector waits for both
    servers to be healthy."""
    pg = services["postgres"]
    env = environment(pg)
    want = (
        f"postgresql://{env['POSTGRES_USER']}:{env['POSTGRES_PASSWORD']}"
        f"@postgres:5432/{env['POSTGRES_DB']}"
    )
    for name, service in single_server_roles(services).items():
        assert environment(service).get("EVENTCORE_SQL__URL") == want, name
    assert "pg_isready" in pg["healthcheck"]["test"]
    assert any(v.endswith(":/var/lib/postgresql/data") for v in pg["volumes"])
    for server in ("redis", "postgres"):
        assert services["sql"]["depends_on"][server]["condition"] == "service_healthy"


def test_workers_are_given_time_to_drain(services: dict[str, dict[str, Any]]) -> None:
    grace = Settings().worker.shutdown_grace
    for name in WORKERS:
        assert seconds(services[name]["stop_grace_period"]) > grace, name


@pytest.mark.parametrize(
    "name", ["web", "projector", "sql", "cpu-worker", "gpu-worker", *CLUSTER_ROLES]
)
def test_commands_are_eventcore_commands(services: dict[str, dict[str, Any]], name: str) -> None:
    """The image's entrypoint is ``eventcore``, so each command is its arguments."""
    args = build_parser().parse_args(services[name]["command"])
    role = CLUSTER_ROLES.get(name, name)
    expected = {"web": "web", "projector": "project", "sql": "sql"}.get(role, "worker")
    assert args.command == expected
    if role == "web":
        assert args.host == "0.0.0.0"
        published = [str(p).rsplit(":", 1)[-1] for p in services[name]["ports"]]
        assert str(Settings().web.port) in published
    if role == "cpu-worker":
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
    # A plain `docker compose up` is the single-server stack and nothing else.
    plain = {name for name, service in services.items() if "profiles" not in service}
    assert plain == {"redis", "postgres", "web", "projector", "sql", "cpu-worker"}
    for name, service in services.items():
        if name not in plain and name != "gpu-worker":
            assert service["profiles"] == ["cluster"], name


# -- the cluster profile ------------------------------------------------------


def test_the_cluster_nodes_are_cluster_masters_as_durable_as_redis(
    services: dict[str, dict[str, Any]],
) -> None:
    single = services["redis"]["command"]
    volumes = set()
    for name in NODES:
        node = services[name]
        command = node["command"]
        assert command[0] == "redis-server" and node["image"] == services["redis"]["image"]
        assert option(command, "--cluster-enabled") == "yes", name
        # Clients are sent to the name the node announces: its service name.
        assert option(command, "--cluster-announce-hostname") == name
        assert option(command, "--cluster-preferred-endpoint-type") == "hostname"
        for flag in ("--appendonly", "--appendfsync", "--maxmemory-policy"):
            assert option(command, flag) == option(single, flag), (name, flag)
        assert "redis-cli" in node["healthcheck"]["test"], name
        (volume,) = node["volumes"]
        assert volume.endswith(":/data")
        volumes.add(volume.split(":")[0])
    assert len(volumes) == len(NODES)  # each node its own nodes.conf and AOF


def test_cluster_init_joins_every_node_once_they_are_healthy(
    services: dict[str, dict[str, Any]],
) -> None:
    init = services["cluster-init"]
    assert {n: d["condition"] for n, d in init["depends_on"].items()} == dict.fromkeys(
        NODES, "service_healthy"
    )
    assert init["restart"] == "no" and init["entrypoint"] == ["sh", "-c"]
    (script,) = init["command"]
    assert "redis-cli --cluster create" in script and "--cluster-replicas 0" in script
    assert "--cluster-yes" in script  # no question to answer in a container
    for name in NODES:
        assert f"addr {name})" in script, name
    # Started again on a cluster that is up already, it leaves it be.
    assert script.index("cluster_state:ok") < script.index("--cluster create")
    assert "$$" in script and "${" not in script  # compose leaves the shell's $ alone
    # What the container's sh gets (compose turns $$ into $) is valid shell.
    check = subprocess.run(["sh", "-n", "-c", script.replace("$$", "$")], capture_output=True)
    assert check.returncode == 0, check.stderr


def test_the_cluster_roles_read_the_cluster_as_eventcore_does(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, plain in CLUSTER_ROLES.items():
        service = services[name]
        assert service["command"] == services[plain]["command"], name
        assert service["depends_on"] == {
            "cluster-init": {"condition": "service_completed_successfully"}
        }, name
        assert (repr(service["build"]), service["image"]) == (
            repr(services[plain]["build"]),
            services[plain]["image"],
        )
        settings = load_settings(env=environment(service))
        assert settings.redis.cluster is True, name
        assert settings.partitions > 1, name
        url = settings.redis.url or ""
        assert url.split("//", 1)[1].split(":")[0] in NODES, url
    # Beside a plain `docker compose up`, the cluster's web gets a port of its own.
    assert services["cluster-web"]["ports"] != services["web"]["ports"]


def test_every_named_volume_is_declared() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    used = {
        v.split(":")[0]
        for s in compose["services"].values()
        for v in s.get("volumes", ())
        if not v.startswith((".", "/"))
    }
    assert used == set(compose["volumes"])


def test_web_healthcheck_asks_healthz(services: dict[str, dict[str, Any]]) -> None:
    check = " ".join(services["web"]["healthcheck"]["test"])
    assert "/healthz" in check and f":{Settings().web.port}/" in check


def test_the_image_runs_eventcore() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r'^ENTRYPOINT \["eventcore"\]$', dockerfile, re.MULTILINE)
    assert re.search(r"^USER (?!root)\S+$", dockerfile, re.MULTILINE)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", ".eventcore"} <= set(ignored)
