"""Workers "on other machines": each in its own network namespace, joined to
this host by a veth pair (see tests/netns.py). A worker's link is cut while
it runs a task, for longer than its lease; and a worker joins an
``eventcore redis --listen`` server with the line it prints.

Needs root and ``ip``; skipped otherwise."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from eventcore.connection import make_client
from eventcore.events.task import TERMINAL_EVENT_TYPES
from eventcore.keys import Keys
from eventcore.log import EventLog
from eventcore.nodes import last_seen
from eventcore.server.process import ServerConfig, ServerProcess, free_port
from projections.replay import replay
from tests.conftest import server_binary
from tests.listenkit import JOIN_RE, join_url, read_until, refused_for_auth, start_cli, stop
from tests.netns import Link, NetLab, netns_unavailable
from tests.workerkit import LEASE_MS, spawn_worker, spec, wait_ended, wait_until

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(120),
    pytest.mark.single_server("runs its own single server, reached through the namespaces"),
]

TERMINAL = {t.type_name() for t in TERMINAL_EVENT_TYPES}
# Short client timeouts: a write sent into the cut link fails within seconds
# (and is retried by the worker) instead of waiting out a long socket timeout.
CLIENT_ENV = {
    "EVENTCORE_REDIS__SOCKET_TIMEOUT": "2",
    "EVENTCORE_REDIS__CONNECT_TIMEOUT": "1",
    "EVENTCORE_REDIS__RETRY_ATTEMPTS": "2",
}
# Long enough that the other worker has reclaimed the task, and still runs
# it, when the cut-off worker's own run ends and its result reaches Redis.
SLEEP = 8.0


@pytest.fixture
def lab() -> Iterator[NetLab]:
    why = netns_unavailable()
    if why is not None:
        pytest.skip(why)
    with NetLab() as made:
        yield made


def _stop(*procs: subprocess.Popen[Any]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(10)


async def _history(log: EventLog, task_id: str) -> list[Any]:
    return [e.event for e in await log.history(task_id)]


async def _node_of(log: EventLog, task_id: str, event_type: str, timeout: float) -> str:
    """The node of the first ``event_type`` event of the task, waited for."""
    found: list[str] = []

    async def seen() -> bool:
        found[:] = [e.node for e in await _history(log, task_id) if e.type_name() == event_type]
        return bool(found)

    await wait_until(seen, timeout, what=f"no {event_type} of task {task_id}", interval=0.05)
    return found[0]


async def test_worker_cut_off_past_its_lease(lab: NetLab, tmp_path: Path, namespace: str) -> None:
    """Two workers in namespaces of their own; the one running a task is cut
    off for longer than its lease. The other reclaims and finishes the task;
    it ends once; the cut-off worker's late result is recorded as stale; and,
    its link back, the cut-off worker claims and finishes new work."""
    links = {"a": lab.add(), "b": lab.add()}
    port = free_port()
    # Only loopback and the links' private addresses: no password needed.
    # Redis 6.2 takes one address per --bind argument on its command line,
    # which a setting cannot give: there it listens on every address.
    binary = server_binary()
    addresses = ["127.0.0.1", *(link.host_ip for link in links.values())]
    bind = " ".join(addresses) if binary.version >= (7, 0, 0) else "0.0.0.0"
    server = ServerProcess(
        binary,
        ServerConfig(
            tmp_path / "redis", port=port, settings={"bind": bind, "protected-mode": "no"}
        ),
    )
    server.start()
    client = make_client(server.url)
    log = EventLog(client, Keys(namespace))
    logs = {name: open(tmp_path / f"worker-{name}.log", "wb") for name in links}
    workers = {
        name: spawn_worker(
            f"redis://{link.host_ip}:{port}/0",
            namespace,
            name,
            ["--cpu"],
            env=CLIENT_ENV,
            stderr=logs[name],
            prefix=link.prefix,
        )
        for name, link in links.items()
    }
    try:
        res = await log.submit(spec("sleep", seconds=SLEEP))
        cut_off = await _node_of(log, res.task_id, "task.started", 30)
        other = "b" if cut_off == "a" else "a"
        link: Link = links[cut_off]
        link.cut()
        cut_at = time.monotonic()
        try:
            assert not link.connects(port)
            # The lease passes unrenewed; the other worker takes the task over.
            assert await _node_of(log, res.task_id, "task.started", 0) == cut_off
            await wait_until(
                lambda: _started_by(log, res.task_id, other),
                30,
                what=f"worker {other} never started the task",
                interval=0.05,
            )
            assert time.monotonic() - cut_at > LEASE_MS / 1000
        finally:
            link.restore()
        await wait_until(lambda: link.connects(port), 15, what="the link did not come back")
        assert await wait_ended(log, res.task_id, timeout=40) == "task.succeeded"
        await wait_until(
            lambda: _stale_of(log, res.task_id, cut_off),
            30,
            what=f"no task.result_stale from {cut_off}",
            interval=0.05,
        )

        history = await _history(log, res.task_id)
        ends = [e for e in history if e.type_name() in TERMINAL]
        assert [(e.type_name(), e.node) for e in ends] == [("task.succeeded", other)]
        stale = [e for e in history if e.type_name() == "task.result_stale"]
        assert [(e.node, e.outcome) for e in stale] == [(cut_off, "task.succeeded")]
        view = replay(await log.history(res.task_id)).tasks[res.task_id]
        assert view.illegal == ()
        assert (view.status, view.node) == ("succeeded", other)

        # The other worker stops; new work can only go to the one that was cut off.
        workers[other].terminate()
        assert workers[other].wait(30) == 0
        again = await log.submit(spec("sleep", seconds=0.1))
        assert await wait_ended(log, again.task_id, timeout=30) == "task.succeeded"
        assert await _node_of(log, again.task_id, "task.succeeded", 0) == cut_off
    finally:
        _stop(*workers.values())
        for f in logs.values():
            f.close()
        await client.aclose()
        server.stop()


async def _started_by(log: EventLog, task_id: str, node: str) -> bool:
    return any(
        e.type_name() == "task.started" and e.node == node for e in await _history(log, task_id)
    )


async def _stale_of(log: EventLog, task_id: str, node: str) -> bool:
    return any(
        e.type_name() == "task.result_stale" and e.node == node
        for e in await _history(log, task_id)
    )


@pytest.mark.parametrize("command", ["redis", "up"])
async def test_worker_joins_a_listening_server_with_the_printed_line(
    lab: NetLab, tmp_path: Path, namespace: str, command: str
) -> None:
    """`eventcore redis --listen` (or `up --listen`) on the host side of a
    namespace's link prints a line; a worker in the namespace run with it
    joins: it announces itself and, with no other worker (`redis`), does a
    task. Without the password the namespace gets nothing."""
    link = lab.add()
    port = free_port()
    env = {
        "EVENTCORE_REDIS__DATA_DIR": str(tmp_path / "data"),
        "EVENTCORE_NAMESPACE": namespace,
        "EVENTCORE_WEB__PORT": str(free_port()),
    }
    server = start_cli(command, "--listen", f"{link.host_ip}:{port}", env=env, cwd=tmp_path)
    worker = None
    try:
        lines = read_until(server, JOIN_RE, 60)
        url = join_url(lines)
        assert f"@{link.host_ip}:{port}/" in url
        local = json.loads((tmp_path / "data" / "server.json").read_text())["url"]
        refused = subprocess.run(
            [*link.prefix, "redis-cli", "-h", link.host_ip, "-p", str(port), "SET", "k", "v"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if refused.returncode == 127 or "No such file" in refused.stderr:
            pytest.skip("no redis-cli to try the server without a password")
        assert refused_for_auth(refused.stdout + refused.stderr), refused
        with open(tmp_path / "worker.log", "wb") as worker_log:
            # The printed line says `eventcore worker --gpu`; this machine has no GPU.
            worker = spawn_worker(
                url, namespace, "remote", ["--cpu"], stderr=worker_log, prefix=link.prefix
            )
            client = make_client(local)
            log = EventLog(client, Keys(namespace))
            try:
                await wait_until(
                    lambda: _is_live(log, "remote"), 40, what="the remote worker never joined"
                )
                if command == "redis":  # the only worker: the task is its
                    res = await log.submit(spec("sleep", seconds=0.1))
                    assert await wait_ended(log, res.task_id, timeout=40) == "task.succeeded"
                    assert await _node_of(log, res.task_id, "task.succeeded", 0) == "remote"
            finally:
                await client.aclose()
    finally:
        if worker is not None:
            _stop(worker)
        code, err = stop(server, timeout=60)
    assert code == 0, err


async def _is_live(log: EventLog, node: str) -> bool:
    return node in await last_seen(log)


def test_netns_helper_cleans_up() -> None:
    """Everything a NetLab made is gone after it, also when the block fails."""
    why = netns_unavailable()
    if why is not None:
        pytest.skip(why)
    with pytest.raises(RuntimeError, match="boom"), NetLab() as made:
        link = made.add()
        assert (
            link.ns
            in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        )
        raise RuntimeError("boom")
    assert (
        link.ns
        not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    )
    gone = subprocess.run(["ip", "link", "show", link.host_if], capture_output=True, check=False)
    assert gone.returncode != 0
