"""A local Redis Cluster of real server processes, for development and tests.

``LocalCluster`` starts N masters (no replicas) on free loopback ports, each
with ``cluster-enabled yes`` and its own ``nodes.conf`` in its own directory,
gives each an even share of the 16384 slots, introduces them with
``CLUSTER MEET`` and waits until every node says ``cluster_state:ok``. It does
what ``redis-cli --cluster create`` does, without needing ``redis-cli`` (the
bundled valkey-server comes without one) or any network beyond 127.0.0.1.
``eventcore redis --cluster N`` and the test suite's ``cluster_url`` fixture
run one.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from eventcore.server.process import (
    ServerBinary,
    ServerConfig,
    ServerProcess,
    ServerStartError,
    find_server_binary,
    free_port,
)

__all__ = ["SLOTS", "ClusterNode", "LocalCluster", "parse_cluster_info", "slot_ranges"]

SLOTS = 16384
# Redis 7.0 added ADDSLOTSRANGE, the cluster-port directive and MEET's bus-port argument.
RANGES_SINCE = (7, 0, 0)
# The cluster bus listens on port + 10000 unless cluster-port says otherwise.
BUS_OFFSET = 10000
CONFIG_NAME = "nodes.conf"


def slot_ranges(masters: int) -> list[tuple[int, int]]:
    """Inclusive (first, last) slot ranges splitting the 16384 slots evenly."""
    if masters < 1:
        raise ValueError("a cluster needs at least one master")
    bounds = [i * SLOTS // masters for i in range(masters + 1)]
    return [(bounds[i], bounds[i + 1] - 1) for i in range(masters)]


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ports(binary: ServerBinary) -> tuple[int, int]:
    """A client port and a cluster bus port, both free now."""
    if binary.version >= RANGES_SINCE:
        return free_port(), free_port()
    # Redis 6.2 has no cluster-port: the bus is always port + 10000, which
    # must be a valid port and free as well.
    for _ in range(200):
        port = free_port()
        if port + BUS_OFFSET < 65536 and _port_free(port + BUS_OFFSET):
            return port, port + BUS_OFFSET
    raise ServerStartError("found no free port pair (port, port + 10000) for a cluster node")


def _client(port: int) -> redis.Redis:
    return redis.Redis(
        port=port, socket_timeout=5, socket_connect_timeout=2, retry=Retry(NoBackoff(), 0)
    )


def parse_cluster_info(raw: object) -> dict[str, str]:
    """CLUSTER INFO as text fields, whether redis-py parsed the reply or not."""
    if isinstance(raw, dict):
        return {_text(k): _text(v) for k, v in raw.items()}
    lines = _text(raw).splitlines()
    return dict(line.strip().split(":", 1) for line in lines if ":" in line)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class ClusterNode:
    """One master of a local cluster: its process, ports and slot range."""

    process: ServerProcess
    port: int
    bus_port: int
    slots: tuple[int, int]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


class LocalCluster:
    """``masters`` cluster nodes under ``dir`` (one sub-directory each).

    ``start()`` returns the seed URL (the first node's): a cluster client
    learns every other node from it. ``stop()`` shuts every node down.
    ``settings`` are further redis.conf directives given to every node.
    """

    def __init__(
        self,
        dir: Path,
        masters: int = 3,
        binary: ServerBinary | None = None,
        settings: dict[str, str] | None = None,
        node_timeout_ms: int = 5000,
    ) -> None:
        self.dir = Path(dir)
        self.masters = masters
        self.binary = binary or find_server_binary(prefer="path")
        self.settings = dict(settings or {})
        self.node_timeout_ms = node_timeout_ms
        self.nodes: list[ClusterNode] = []

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

    @property
    def running(self) -> bool:
        """True while every node's process is alive."""
        return bool(self.nodes) and all(node.process.running for node in self.nodes)

    @property
    def url(self) -> str:
        """The seed node's URL."""
        if not self.nodes:
            raise RuntimeError("the cluster is not started")
        return self.nodes[0].url

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def start(self, timeout: float = 30.0) -> str:
        """Start the nodes, assign the slots, join them, and wait for ``cluster_state:ok``.

        On any failure the nodes already started are stopped again and the
        error (a :class:`ServerStartError`) is raised.
        """
        if self.nodes:
            return self.url
        try:
            for i, slots in enumerate(slot_ranges(self.masters)):
                self.nodes.append(self._start_node(i, slots))
            self._assign_and_meet()
            self.wait_ok(timeout)
        except BaseException:
            self.stop()
            raise
        return self.url

    def _start_node(self, index: int, slots: tuple[int, int]) -> ClusterNode:
        port, bus_port = _ports(self.binary)
        settings = {
            "cluster-enabled": "yes",
            "cluster-config-file": str((self.dir / f"node-{index}" / CONFIG_NAME).resolve()),
            "cluster-node-timeout": str(self.node_timeout_ms),
        }
        if self.binary.version >= RANGES_SINCE:
            settings["cluster-port"] = str(bus_port)
        settings |= self.settings
        process = ServerProcess(
            self.binary, ServerConfig(self.dir / f"node-{index}", port=port, settings=settings)
        )
        process.start()
        return ClusterNode(process, port, bus_port, slots)

    def _assign_and_meet(self) -> None:
        ranges = self.binary.version >= RANGES_SINCE
        for epoch, node in enumerate(self.nodes, 1):
            with _client(node.port) as client:
                first, last = node.slots
                if ranges:
                    client.execute_command("CLUSTER ADDSLOTSRANGE", first, last)
                else:
                    client.execute_command("CLUSTER ADDSLOTS", *range(first, last + 1))
                # Distinct epochs from the start, as redis-cli does, so no
                # collision has to be resolved before the cluster settles.
                client.execute_command("CLUSTER SET-CONFIG-EPOCH", epoch)
        with _client(self.nodes[0].port) as seed:
            for node in self.nodes[1:]:
                bus = (node.bus_port,) if ranges else ()
                seed.execute_command("CLUSTER MEET", "127.0.0.1", node.port, *bus)

    def states(self) -> list[dict[str, str]]:
        """Every node's CLUSTER INFO, as text fields."""
        out = []
        for node in self.nodes:
            with _client(node.port) as client:
                out.append(parse_cluster_info(client.execute_command("CLUSTER INFO")))
        return out

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Block until every node knows every other and says ``cluster_state:ok``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                states = self.states()
            except redis.RedisError:
                states = []
            if states and all(
                s.get("cluster_state") == "ok"
                and s.get("cluster_known_nodes") == str(self.masters)
                and s.get("cluster_slots_ok") == str(SLOTS)
                for s in states
            ):
                return
            if time.monotonic() > deadline:
                raise ServerStartError(
                    f"the local cluster did not reach cluster_state:ok within {timeout:g}s: "
                    f"{[s.get('cluster_state') for s in states]}"
                )
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        """Shut every node down (SIGKILL after ``timeout``)."""
        nodes, self.nodes = self.nodes, []
        for node in nodes:
            node.process.stop(timeout)
