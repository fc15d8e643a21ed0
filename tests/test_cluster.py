"""Redis Cluster: the local cluster, connecting to it, and what ``eventcore
check`` says about it, healthy or not."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from eventcore.config import Settings, load_settings
from eventcore.connection import (
    ClientOptions,
    cluster_facts,
    connect,
    detect_cluster,
    make_client,
    sync_client,
)
from eventcore.errors import ConfigError, RedisUnavailable
from eventcore.keys import Keys
from eventcore.server.cluster import SLOTS, LocalCluster, parse_cluster_info, slot_ranges
from eventcore.server.process import free_port
from eventcore.server.target import client_options
from tests.conftest import server_binary
from tests.replaykit import cli
from tests.webkit import j, settings_for, web_client
from workers.resources import ResourceConfig, Resources

# -- pure parts ------------------------------------------------------------------


@pytest.mark.parametrize("masters", [1, 2, 3, 5, 7])
def test_slot_ranges_cover_every_slot_once_and_evenly(masters: int) -> None:
    ranges = slot_ranges(masters)
    covered = [slot for first, last in ranges for slot in range(first, last + 1)]
    assert covered == list(range(SLOTS))
    sizes = [last - first + 1 for first, last in ranges]
    assert max(sizes) - min(sizes) <= 1


def test_parse_cluster_info_reads_text_and_parsed_replies() -> None:
    raw = b"cluster_state:ok\r\ncluster_slots_assigned:16384\r\n"
    assert parse_cluster_info(raw) == {"cluster_state": "ok", "cluster_slots_assigned": "16384"}
    assert parse_cluster_info({"cluster_state": "fail"}) == {"cluster_state": "fail"}


@pytest.mark.parametrize(
    ("value", "expected"), [("true", True), ("false", False), ("1", True), ("", None)]
)
def test_cluster_key_from_the_environment(value: str, expected: bool | None) -> None:
    settings = load_settings(env={"EVENTCORE_REDIS__CLUSTER": value})
    assert settings.redis.cluster is expected
    assert client_options(settings).cluster is expected


def test_cluster_key_defaults_to_detection_and_refuses_other_words(tmp_path: Path) -> None:
    assert load_settings(env={}).redis.cluster is None
    with pytest.raises(ConfigError, match=r"redis\.cluster.*EVENTCORE_REDIS__CLUSTER"):
        load_settings(env={"EVENTCORE_REDIS__CLUSTER": "maybe"})
    path = tmp_path / "c.toml"
    path.write_text("[redis]\ncluster = true\n")
    assert load_settings(path, env={}).redis.cluster is True


# -- a single server -----------------------------------------------------------------


async def test_auto_detection_on_a_single_server_gives_the_plain_client(single_url: str) -> None:
    client = await connect(single_url)
    try:
        assert type(client) is Redis and await client.ping()
    finally:
        await client.aclose()


async def test_cluster_true_on_a_single_server_is_one_clear_line(single_url: str) -> None:
    with pytest.raises(RedisUnavailable, match="not a cluster node") as err:
        await connect(single_url, ClientOptions(cluster=True))
    assert "\n" not in str(err.value)


# -- the session's cluster ---------------------------------------------------------


async def test_connect_detects_the_cluster_and_reaches_every_slot(
    cluster_url: str, namespace: str
) -> None:
    client = await connect(cluster_url, ClientOptions(retry_attempts=2))
    try:
        assert isinstance(client, RedisCluster)
        # Keys spread over all three masters: the client follows each to its node.
        names = [f"{namespace}:{i}" for i in range(30)]
        for name in names:
            await client.set(name, name)
        assert [await client.get(n) for n in names] == [n.encode() for n in names]
        slots = {client.keyslot(n) for n in names}
        owners = {client.nodes_manager.get_node_from_slot(s).name for s in slots}
        assert len(owners) == 3
        await client.delete(*names)
    finally:
        await client.aclose()


async def test_cluster_false_gives_the_plain_client(cluster_url: str) -> None:
    client = await connect(cluster_url, ClientOptions(cluster=False))
    try:
        assert type(client) is Redis and await client.ping()
    finally:
        await client.aclose()


async def test_make_client_takes_the_cluster_option(cluster_url: str) -> None:
    client = make_client(cluster_url, ClientOptions(cluster=True))
    try:
        assert isinstance(client, RedisCluster) and await client.ping()
    finally:
        await client.aclose()


def test_a_cluster_client_refuses_a_unix_socket_or_another_database() -> None:
    with pytest.raises(RedisUnavailable, match="unix socket"):
        make_client("unix:///tmp/x.sock", ClientOptions(cluster=True))
    with pytest.raises(RedisUnavailable, match="database 0"):
        make_client("redis://127.0.0.1:7000/3", ClientOptions(cluster=True))


async def test_cluster_facts(cluster_url: str) -> None:
    facts = await cluster_facts(cluster_url)
    assert facts.state == "ok" and facts.slots_assigned == facts.slots_ok == SLOTS
    assert len(facts.masters) == 3


def test_check_prints_the_cluster_facts(cluster_url: str) -> None:
    res = cli("check", "--json", env={"REDIS_URL": cluster_url})
    assert res.returncode == 0, res.stderr
    facts = json.loads(res.stdout)
    assert facts["cluster_state"] == "ok"
    assert facts["cluster_slots"] == f"{SLOTS} of {SLOTS} served"
    assert facts["cluster_masters"].startswith("3 (127.0.0.1:")
    text = cli("check", env={"REDIS_URL": cluster_url})
    assert text.returncode == 0 and "cluster_state: ok" in text.stdout


# -- the cluster client's pool ------------------------------------------------------


async def test_a_burst_on_a_cluster_waits_for_a_connection(
    cluster_url: str, namespace: str
) -> None:
    """Regression: past ``max_connections`` on a node redis-py's cluster client
    refused a command at once (MaxConnectionsError); now it waits its turn,
    pipelines too."""
    client = make_client(
        cluster_url, ClientOptions(cluster=True, max_connections=2, pool_timeout=10)
    )
    try:
        # Each BLPOP holds its connection for its whole timeout.
        key = f"{namespace}:empty"

        async def piped() -> list[object]:
            async with client.pipeline(transaction=False) as pipe:
                pipe.blpop([key], timeout=0.05)
                pipe.get(key)
                return await pipe.execute()

        got = await asyncio.gather(
            *(client.blpop([key], timeout=0.05) for _ in range(10)), *(piped() for _ in range(4))
        )
        assert got == [None] * 10 + [[None, None]] * 4
        node = client.get_node_from_key(key)
        assert len(node._connections) <= 2
    finally:
        await client.aclose()


async def test_a_wait_on_a_cluster_that_runs_out_is_a_connection_error(
    cluster_url: str, namespace: str
) -> None:
    client = make_client(
        cluster_url,
        ClientOptions(cluster=True, max_connections=1, pool_timeout=0.2, retry_attempts=0),
    )
    try:
        holder = asyncio.create_task(client.blpop([f"{namespace}:held"], timeout=1))
        while not client.places.locked():
            await asyncio.sleep(0.01)
        started = time.monotonic()
        with pytest.raises(redis.ConnectionError, match=r"redis\.pool_timeout"):
            await client.ping()
        assert time.monotonic() - started < 2
        await holder
        assert await client.ping()
        # A command started while its task holds the one place (a pipeline
        # retrying a redirected command alone) uses that place, not a second.
        got = await client.in_place(lambda: client.get(f"{namespace}:k"))
        assert got is None and not client.places.locked()
    finally:
        await client.aclose()


# -- what builds its own clients ----------------------------------------------------


async def test_detect_cluster_asks_the_server_unless_told(
    cluster_url: str, single_url: str
) -> None:
    assert await detect_cluster(cluster_url) is True
    assert await detect_cluster(single_url) is False
    assert await detect_cluster(single_url, ClientOptions(cluster=True)) is True  # not asked
    with pytest.raises(RedisUnavailable, match="cannot reach Redis") as err:
        await detect_cluster(f"redis://127.0.0.1:{free_port()}")
    assert "\n" not in str(err.value)


async def test_the_web_app_asks_the_server_and_serves_a_cluster(
    cluster_url: str, namespace: str
) -> None:
    """``redis.cluster`` unset: the app finds the cluster at start-up; its
    submits reach the partitions on every master."""
    settings = Settings(namespace=namespace, partitions=3)
    async with web_client(cluster_url, settings) as c:
        web = c.app.state.web  # type: ignore[attr-defined]
        assert isinstance(web.redis, RedisCluster) and isinstance(web.blocking, RedisCluster)
        keys = Keys(namespace, 3)
        streams: set[str] = set()
        for _ in range(200):  # a task's partition is random: until each has one
            if len(streams) == 3:
                break
            res = await c.post("/v1/tasks", json={"kind": "noop"})
            assert res.status_code == 202, res.text
            streams.add(keys.events(keys.partition(j(res)["task_id"])))
        owners = {
            web.redis.nodes_manager.get_node_from_slot(web.redis.keyslot(s)).name for s in streams
        }
        assert len(streams) == 3 and len(owners) > 1
        assert (await c.get("/healthz")).status_code == 200


async def test_the_web_app_on_a_single_server_keeps_the_plain_client(
    single_url: str, namespace: str
) -> None:
    async with web_client(single_url, settings_for(namespace)) as c:
        web = c.app.state.web  # type: ignore[attr-defined]
        assert type(web.redis) is Redis and type(web.blocking) is Redis
        assert (await c.post("/v1/tasks", json={"kind": "noop"})).status_code == 202


def test_a_child_process_reads_and_writes_blobs_on_a_cluster(
    cluster_url: str, namespace: str
) -> None:
    """A worker's child process builds its own blocking client: a cluster one
    when the server is a cluster node (each blob has its own slot)."""
    resources = Resources(ResourceConfig(redis_url=cluster_url, namespace=namespace))
    blobs = [bytes([i]) * 64 for i in range(24)]
    refs = [resources.blobs.put(b).ref for b in blobs]
    assert [resources.blobs.get(ref) for ref in refs] == blobs
    assert isinstance(resources.blobs.redis, redis.RedisCluster)


def test_the_blocking_client_takes_the_cluster_option(cluster_url: str, single_url: str) -> None:
    plain = sync_client(cluster_url, cluster=False)
    assert type(plain) is redis.Redis and plain.ping()
    plain.close()
    with pytest.raises(RedisUnavailable, match="cannot reach Redis"):
        sync_client(f"redis://127.0.0.1:{free_port()}")
    detected = sync_client(single_url)
    assert type(detected) is redis.Redis and detected.ping()
    detected.close()


# -- broken clusters -----------------------------------------------------------------


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """A cluster of this test's own, to break."""
    with LocalCluster(tmp_path, 3, server_binary(), node_timeout_ms=1000) as cluster:
        yield cluster


def assert_one_error_line(res: subprocess.CompletedProcess[str], *words: str) -> None:
    assert res.returncode == 1, res.stdout
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("eventcore: error: "), res.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_a_stopped_master_is_one_clear_line(own_cluster: LocalCluster) -> None:
    stopped = own_cluster.nodes[2]
    stopped.process.stop()
    res = cli("check", env={"REDIS_URL": own_cluster.url})
    # Before the others mark it failed it does not answer; after, the state is fail.
    assert_one_error_line(res, "Redis Cluster at")
    assert f"127.0.0.1:{stopped.port}" in res.stderr or "cluster_state:fail" in res.stderr


def test_missing_slots_are_one_clear_line(own_cluster: LocalCluster) -> None:
    """The owner drops ten of its slots: it no longer serves them, and no
    other node takes them over."""
    owner = own_cluster.nodes[1]
    first = owner.slots[0]
    with redis.Redis(port=owner.port) as node:
        node.execute_command("CLUSTER DELSLOTS", *range(first, first + 10))
    res = cli("check", env={"REDIS_URL": own_cluster.url})
    assert_one_error_line(res, f"{SLOTS - 10} of {SLOTS} slots assigned")


def test_an_unreachable_cluster_url_is_one_clear_line(own_cluster: LocalCluster) -> None:
    url = own_cluster.url
    own_cluster.stop()
    res = cli("check", env={"REDIS_URL": url, "EVENTCORE_REDIS__CLUSTER": "true"})
    assert_one_error_line(res, "cannot reach Redis at", url)


@pytest.mark.slow
async def test_the_web_app_answers_503_while_a_master_is_down(
    own_cluster: LocalCluster, namespace: str
) -> None:
    """Whatever the cluster client raises while a master is gone (refused
    connections, CLUSTERDOWN, slots no node serves), the app answers 503 with
    Retry-After, never a 500, and serves again once the master is back."""
    settings = Settings(namespace=namespace, partitions=3)
    async with web_client(own_cluster.url, settings) as c:
        assert (await c.post("/v1/tasks", json={"kind": "noop"})).status_code == 202
        node = own_cluster.nodes[2]
        node.process.stop()
        statuses: set[int] = set()
        deadline = time.monotonic() + 20
        # Before the others mark it failed, and after (cluster_state:fail).
        with redis.Redis(port=own_cluster.nodes[0].port) as other:
            failed = False
            while not failed:
                assert time.monotonic() < deadline, "the cluster did not notice"
                failed = (
                    parse_cluster_info(other.execute_command("CLUSTER INFO")).get("cluster_state")
                    == "fail"
                )
                for _ in range(6):
                    res = await c.post("/v1/tasks", json={"kind": "noop"})
                    assert res.status_code in (202, 503), res.text
                    if res.status_code == 503:
                        assert res.headers["retry-after"] == "1"
                        assert j(res)["error"] == "unavailable"
                    statuses.add(res.status_code)
                    res = await c.get("/v1/queues")
                    assert res.status_code in (200, 503), res.text
                    assert (await c.get("/healthz")).status_code in (200, 503)
                await asyncio.sleep(0.2)
        assert 503 in statuses
        node.process.start()
        deadline = time.monotonic() + 30
        while (await c.post("/v1/tasks", json={"kind": "noop"})).status_code != 202:
            assert time.monotonic() < deadline, "the app did not serve again"
            await asyncio.sleep(0.2)


@pytest.mark.slow
async def test_a_web_app_started_before_its_cluster_switches_once_it_answers(
    own_cluster: LocalCluster, namespace: str
) -> None:
    """``redis.cluster`` unset and no node answering at start-up: the app
    starts (503 meanwhile), keeps asking, and serves with cluster clients
    once the cluster is back."""
    for node in own_cluster.nodes:
        node.process.stop()
    settings = Settings(namespace=namespace, partitions=3)
    async with web_client(own_cluster.url, settings) as c:
        web = c.app.state.web  # type: ignore[attr-defined]
        res = await c.post("/v1/tasks", json={"kind": "noop"})
        assert res.status_code == 503 and j(res)["error"] == "unavailable"
        for node in own_cluster.nodes:
            node.process.start()
        deadline = time.monotonic() + 30
        while not isinstance(web.redis, RedisCluster):
            assert time.monotonic() < deadline, "the app did not find the cluster"
            await asyncio.sleep(0.1)
        keys = Keys(namespace, 3)
        partitions: set[int] = set()
        while len(partitions) < 3:  # a task's partition is random: until each has one
            res = await c.post("/v1/tasks", json={"kind": "noop"})
            if res.status_code == 503:  # the cluster settles (cluster_state:ok again)
                assert time.monotonic() < deadline, res.text
                await asyncio.sleep(0.2)
                continue
            assert res.status_code == 202, res.text
            partitions.add(keys.partition(j(res)["task_id"]))
        assert isinstance(web.hub.log.redis, RedisCluster)  # the feed reads the cluster too


def test_local_cluster_stops_every_node(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, 3, server_binary())
    cluster.start()
    processes = [node.process for node in cluster.nodes]
    assert all(p.running for p in processes)
    states = cluster.states()
    assert {s["cluster_state"] for s in states} == {"ok"}
    assert all((tmp_path / f"node-{i}" / "nodes.conf").is_file() for i in range(3))
    cluster.stop()
    assert not any(p.running for p in processes)


@pytest.mark.slow
def test_redis_cluster_command_runs_until_interrupted(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "eventcore.cli", "redis", "--cluster", "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("redis://127.0.0.1:")
        check = cli("check", "--json", env={"REDIS_URL": url})
        assert check.returncode == 0, check.stderr
        assert json.loads(check.stdout)["cluster_masters"].startswith("3 ")
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    after = cli("check", env={"REDIS_URL": url})
    assert after.returncode == 1  # the nodes went with it
