"""The eventcore command, run as a real process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from eventcore.cli.main import GROUPS, build
from eventcore.server.process import free_port
from tests.replaykit import cli


def start(*args: str, env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTCORE_")}
    full_env.pop("REDIS_URL", None)
    full_env.update(env)
    return subprocess.Popen(
        [sys.executable, "-m", "eventcore.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
        cwd=cwd,
    )


def help_groups(text: str) -> dict[str, list[str]]:
    """The commands listed under each heading of the top-level help."""
    groups: dict[str, list[str]] = {}
    heading = None
    for line in text.splitlines():
        if line.endswith(":") and not line.startswith(" "):
            heading = None if line == "options:" else line[:-1]
            if heading is not None:
                groups[heading] = []
        elif heading is not None and line.startswith("  ") and line[2] != " ":
            groups[heading].append(line.split()[0])
    return groups


def test_help_lists_every_command_under_exactly_one_heading() -> None:
    """The top-level help lists the commands by noun, from :data:`GROUPS`;
    a command added without a place there would be missing from the help."""
    commands = build()
    groups = help_groups(commands.parser.format_help())
    assert list(groups) == [
        "run the system",
        "tasks",
        "the log",
        "the views",
        "the history",
        "administration",
    ]
    assert groups == {heading: list(names) for heading, names in GROUPS}
    listed = Counter(name for names in groups.values() for name in names)
    assert [name for name, n in listed.items() if n > 1] == []
    assert sorted(listed) == sorted(commands.handlers)
    assert sorted(commands.helps) == sorted(commands.handlers)


def test_help_as_run_shows_the_groups_and_each_commands_own_help() -> None:
    res = cli("--help")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("usage: eventcore [-h] [--config FILE] [-v] COMMAND ...")
    groups = help_groups(res.stdout)
    assert groups["tasks"] == ["submit"] and "worker" in groups["run the system"]
    submit = cli("submit", "--help")
    assert submit.stdout.startswith("usage: eventcore submit [-h]")
    assert "--idempotency-key" in submit.stdout and "--wait" in submit.stdout


def test_bad_config_value_names_key_and_source_without_traceback() -> None:
    res = cli("config", env={"EVENTCORE_PARTITIONS": "many"})
    assert res.returncode == 2
    assert "partitions" in res.stderr and "EVENTCORE_PARTITIONS" in res.stderr
    assert "Traceback" not in res.stderr


def test_bad_config_file_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[web]\nport = 'x'\n")
    res = cli("--config", str(bad), "config")
    assert res.returncode == 2 and "web.port" in res.stderr and str(bad) in res.stderr


def test_config_prints_toml_that_loads_back(tmp_path: Path) -> None:
    res = cli("config", env={"EVENTCORE_PARTITIONS": "3"})
    assert res.returncode == 0, res.stderr
    path = tmp_path / "out.toml"
    path.write_text(res.stdout)
    again = cli("--config", str(path), "config", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["partitions"] == 3


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://localhost:6379", "scheme 'http'"),
        ("redis://127.0.0.1:{port}/0", "cannot reach Redis at redis://127.0.0.1:{port}/0"),
    ],
)
def test_unusable_redis_url_is_one_clear_line(url: str, words: str) -> None:
    port = str(free_port())
    res = cli("check", env={"REDIS_URL": url.format(port=port)})
    assert res.returncode == 1
    assert words.format(port=port) in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_check_describes_the_server(redis_url: str) -> None:
    res = cli("check", "--json", env={"REDIS_URL": redis_url})
    assert res.returncode == 0, res.stderr
    facts = json.loads(res.stdout)
    assert facts["url"] == redis_url and facts["server"].split()[0] in ("redis", "valkey")


def test_check_warns_when_redis_may_evict(tmp_path: Path) -> None:
    from eventcore.server.process import ServerConfig, ServerProcess, free_port
    from tests.conftest import server_binary

    server = ServerProcess(server_binary(), ServerConfig(tmp_path, port=free_port()))
    url = server.start()
    try:
        quiet = cli("check", env={"REDIS_URL": url})
        assert "maxmemory-policy" not in quiet.stderr  # the default is noeviction
        import redis

        with redis.Redis.from_url(url) as client:
            client.config_set("maxmemory-policy", "allkeys-lru")
        loud = cli("check", env={"REDIS_URL": url})
        assert loud.returncode == 0 and "'allkeys-lru'" in loud.stderr
        assert "noeviction" in loud.stderr
    finally:
        server.stop()


@pytest.mark.slow
def test_redis_command_runs_embedded_server_until_interrupted(tmp_path: Path) -> None:
    proc = start("redis", env={"EVENTCORE_REDIS__DATA_DIR": str(tmp_path / "data")}, cwd=tmp_path)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("unix://")
        check = cli("check", "--json", env={"REDIS_URL": url})
        assert check.returncode == 0, check.stderr
        assert json.loads(check.stdout)["appendonly"] == "yes"
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    after = cli("check", env={"REDIS_URL": url})
    assert after.returncode == 1  # the server went with it


@pytest.mark.slow
def test_up_runs_the_stack_and_stops_cleanly(tmp_path: Path) -> None:
    """`eventcore up`: Redis, projector and worker; a task submitted to it runs,
    the projector's view shows it, and SIGTERM stops everything."""
    import asyncio

    from eventcore.connection import make_client
    from eventcore.keys import Keys
    from eventcore.log import EventLog
    from eventcore.server.process import free_port
    from projections.store import ViewStore

    env = {"EVENTCORE_REDIS__DURABILITY": "durable", "EVENTCORE_WEB__PORT": str(free_port())}
    proc = start("up", env=env, cwd=tmp_path)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert "eventcore is up" in first and "embedded" in first
        url = first.rsplit(" ", 1)[1].strip()
        assert "appendfsync=always" in proc.stdout.readline()
        lines = [proc.stdout.readline()]
        while not lines[-1].strip().startswith("web: http://") and len(lines) < 40:
            lines.append(proc.stdout.readline())
        assert lines[-1].strip().startswith("web: http://"), lines
        assert any(line.strip().startswith("worker |") for line in lines), lines
        res = cli("submit", "noop", "-p", "x=7", "--wait", env={"REDIS_URL": url}, timeout=30)
        assert res.returncode == 0, res.stdout + res.stderr
        task_id = res.stdout.splitlines()[0]

        async def view():
            client = make_client(url)
            try:
                store = ViewStore(EventLog(client, Keys()))
                for _ in range(100):
                    if (v := await store.task(task_id)) and v.status == "succeeded":
                        return v
                    await asyncio.sleep(0.05)
            finally:
                await client.aclose()

        seen = asyncio.run(view())
        assert seen is not None and seen.result == {"x": 7}
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=40)
    assert proc.returncode == 0, err
    assert "eventcore stopped" in out and "projector stopped" in out
    assert (tmp_path / ".eventcore" / "appendonlydir").is_dir()


@pytest.mark.slow
def test_worker_and_submit_wait(redis_url: str, tmp_path: Path) -> None:
    env = {"REDIS_URL": redis_url, "EVENTCORE_NAMESPACE": "cli" + os.urandom(4).hex()}
    worker = start("worker", "--cpu", "--concurrency", "2", env=env, cwd=tmp_path)
    try:
        ok = cli("submit", "sleep", "-p", "seconds=0.3", "-p", "steps=3", "--wait", env=env)
        assert ok.returncode == 0, ok.stderr
        lines = ok.stdout.splitlines()
        assert "submitted" in lines[1] and "progress 100%" in ok.stdout
        assert lines[-1].endswith('succeeded: {"slept": 0.3}')
        bad = cli("submit", "fail", "-p", "retryable=false", "--wait", env=env)
        assert bad.returncode == 1 and "failed TaskError: asked to fail" in bad.stdout
        unknown = cli("submit", "noop", "--queue", "nowhere", env=env)
        assert unknown.returncode == 1 and "nowhere" in unknown.stderr
        assert "Traceback" not in unknown.stderr
    finally:
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=20)
    assert worker.returncode == 0, err


def test_worker_refuses_queues_it_cannot_serve(redis_url: str) -> None:
    res = cli("worker", "--cpu", "--queues", "gpu-high", env={"REDIS_URL": redis_url})
    assert res.returncode == 1 and "gpu-high" in res.stderr and "GPU" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.slow
def test_inpaint_from_files_writes_the_png(redis_url: str, tmp_path: Path) -> None:
    import cv2
    import numpy as np

    img = np.zeros((60, 80, 3), np.uint8)
    img[:, :40] = (200, 30, 30)
    cv2.putText(img, "ec", (30, 40), cv2.FONT_HERSHEY_SIMPLEX, 1, (255, 255, 255), 2)
    mask = np.zeros((60, 80), np.uint8)
    mask[20:40, 30:50] = 255
    cv2.imwrite(str(tmp_path / "in.png"), img)
    cv2.imwrite(str(tmp_path / "mask.png"), mask)
    env = {
        "REDIS_URL": redis_url,
        "EVENTCORE_NAMESPACE": "cli" + os.urandom(4).hex(),
        # a CPU box with image handlers serves the cpu queues
        "EVENTCORE_QUEUES": '[{"name": "cpu-light"}]',
    }
    worker = start("worker", "--cpu", "--concurrency", "1", env=env, cwd=tmp_path)
    try:
        res = cli(
            "submit",
            "inpaint",
            "-f",
            f"image={tmp_path / 'in.png'}",
            "-f",
            f"mask={tmp_path / 'mask.png'}",
            "-p",
            "hd_strategy=Original",
            "--wait",
            "-o",
            str(tmp_path / "out.png"),
            env=env,
            timeout=60,
        )
        assert res.returncode == 0, res.stdout + res.stderr
        missing = cli("submit", "inpaint", "-f", f"image={tmp_path / 'nope.png'}", env=env)
        assert missing.returncode == 1 and "cannot read" in missing.stderr
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=20)
    out = cv2.imread(str(tmp_path / "out.png"))
    assert np.array_equal(out, cv2.inpaint(img, mask, 4, cv2.INPAINT_NS))


def test_events_and_replay_commands(redis_url: str) -> None:
    import asyncio

    from eventcore.connection import connect
    from eventcore.events import TaskProgress, TaskSpec
    from eventcore.keys import Keys
    from eventcore.log import EventLog

    ns = "cli" + os.urandom(4).hex()
    env = {"REDIS_URL": redis_url, "EVENTCORE_NAMESPACE": ns}

    async def seed() -> str:
        client = await connect(redis_url)
        try:
            log = EventLog(client, Keys(ns))
            res = await log.submit(TaskSpec(kind="noop", queue="cpu-light", params={"n": 1}))
            await log.append(TaskProgress(task_id=res.task_id, attempt=1, progress=0.5))
            return res.task_id
        finally:
            await client.aclose()

    task_id = asyncio.run(seed())
    history = cli("events", "history", task_id, env=env)
    assert history.returncode == 0, history.stderr
    assert "task.submitted" in history.stdout and "task.progress" in history.stdout
    as_json = cli("events", "tail", "--task", task_id, "--json", env=env)
    lines = [json.loads(x) for x in as_json.stdout.splitlines()]
    assert [x["type"] for x in lines] == ["task.submitted", "task.progress"]
    missing = cli("events", "history", "0190a8a0-0000-7000-8000-000000000009", env=env)
    assert missing.returncode == 1 and "no events" in missing.stderr
    # No projector ran: the views are behind, not wrong (compared at their watermark).
    behind = cli("replay", "verify", env=env)
    assert behind.returncode == 0 and "equal a replay" in behind.stdout, behind.stdout
    assert "2 newer log entries are not in the views yet" in behind.stderr


def test_replay_rebuild_command(redis_url: str) -> None:
    ns = "cli" + os.urandom(4).hex()
    env = {"REDIS_URL": redis_url, "EVENTCORE_NAMESPACE": ns}
    assert cli("submit", "noop", "--queue", "cpu-light", env=env).returncode == 0
    res = cli("replay", "rebuild", "--batch", "10", env=env)
    assert res.returncode == 0, res.stderr
    assert "rebuilt 1 entries" in res.stdout and "switched from 'live'" in res.stdout
    ok = cli("replay", "verify", env=env)
    assert ok.returncode == 0 and "equal a replay" in ok.stdout, ok.stdout
    one = cli("replay", "verify", "--shard", "0", "--shard", "n", env=env)
    assert one.returncode == 0 and "(shards 0, n) equal a replay" in one.stdout, one.stdout
    bad = cli("replay", "verify", "--shard", "7", env=env)
    assert bad.returncode == 1 and "no such view shard (there are 0, n)" in bad.stderr


def test_status_prints_queues_and_pending(redis_url: str) -> None:
    env = {"REDIS_URL": redis_url, "EVENTCORE_NAMESPACE": "st" + os.urandom(4).hex()}
    empty = cli("status", env=env)
    assert empty.returncode == 0, empty.stderr
    assert "no nodes have announced themselves yet" in empty.stdout
    for _ in range(2):
        assert cli("submit", "noop", env=env).returncode == 0
    res = cli("status", "--json", env=env)
    assert res.returncode == 0, res.stderr
    rows = {q["queue"]: q for q in json.loads(res.stdout)["queues"]}
    assert rows["cpu-light"]["entries"] == 2 and rows["cpu-light"]["pending"] == 0
    table = cli("status", env=env).stdout.splitlines()
    assert table[0].split()[:3] == ["queue", "entries", "pending"]
    assert any(line.split()[:2] == ["cpu-light", "2"] for line in table)


# -- --config anywhere on the line -------------------------------------------------------

COMMAND_LINES = [
    ["up"],
    ["redis"],
    ["check"],
    ["config"],
    ["worker", "--cpu"],
    ["project"],
    ["web", "--port", "0"],
    ["status"],
    ["submit", "noop"],
    ["token", "list"],
    ["events", "export"],
    ["events", "history", "x"],
    ["replay", "verify"],
    ["as-of", "--stats", "--at", "0"],
]


@pytest.mark.parametrize("argv", COMMAND_LINES, ids=" ".join)
def test_config_is_read_when_given_after_the_command(argv: list[str], tmp_path: Path) -> None:
    """`eventcore up --config F` was "unrecognized arguments": only
    `eventcore --config F up` worked. A file with a wrong value shows the file
    was read, before anything starts."""
    bad = tmp_path / "bad.toml"
    bad.write_text("partitions = 0\n")
    res = cli(*argv, "--config", str(bad), cwd=tmp_path, timeout=30)
    assert res.returncode == 2, res.stderr
    assert "partitions" in res.stderr and str(bad) in res.stderr, res.stderr
    assert "unrecognized" not in res.stderr
    assert not (tmp_path / ".eventcore").exists()


def test_config_after_a_sub_command_is_used(redis_url: str, tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(f'namespace = "cfg{os.urandom(4).hex()}"\n[redis]\nurl = "{redis_url}"\n')
    shown = cli("config", "--json", "--config", str(good))
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["redis"]["url"] == redis_url
    export = cli("events", "export", "--config", str(good), "-v", cwd=tmp_path)
    assert export.returncode == 0, export.stderr
    assert "exported 0 entries" in export.stderr
    # Before the command and after it: the one after wins.
    bad = tmp_path / "bad.toml"
    bad.write_text("partitions = 0\n")
    both = cli("--config", str(bad), "config", "--config", str(good))
    assert both.returncode == 0, both.stderr


# -- only up and redis start a Redis ---------------------------------------------------


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in cmdline:
                found.append(cmdline)
    return found


@pytest.mark.parametrize(
    "argv",
    [
        ["events", "export"],
        ["events", "tail"],
        ["status"],
        ["check"],
        ["replay", "verify"],
        ["submit", "noop"],
        ["project"],
        ["worker", "--cpu"],
    ],
    ids=" ".join,
)
def test_tools_refuse_when_no_redis_runs_in_the_data_dir(argv: list[str], tmp_path: Path) -> None:
    """With REDIS_URL unset and nothing running in the data directory,
    `events export` started an empty embedded server and exported 0 entries
    without a word. Now it says no Redis runs there and how to start one."""
    data = tmp_path / "data"
    res = cli(*argv, env={"EVENTCORE_REDIS__DATA_DIR": str(data)}, cwd=tmp_path, timeout=30)
    assert res.returncode == 1, res.stdout + res.stderr
    assert f"no Redis is running in {data}" in res.stderr
    assert "eventcore up" in res.stderr and "eventcore redis" in res.stderr
    assert "REDIS_URL" in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not data.exists() and list(tmp_path.iterdir()) == []
    assert _processes_mentioning(str(tmp_path)) == []


@pytest.mark.slow
def test_tools_use_the_redis_running_in_the_data_dir(tmp_path: Path) -> None:
    """The embedded server `eventcore redis` (or `up`) runs is reused by the
    tools; once it is stopped they refuse again, its old lock file
    notwithstanding."""
    env = {"EVENTCORE_REDIS__DATA_DIR": str(tmp_path / "data")}
    proc = start("redis", env=env, cwd=tmp_path)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("unix://")
        export = cli("events", "export", env=env, cwd=tmp_path)
        assert export.returncode == 0, export.stderr
        assert "exported 0 entries" in export.stderr
        status = cli("status", env=env, cwd=tmp_path)
        assert status.returncode == 0, status.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=15)
    assert (tmp_path / "data" / "lock").exists()
    again = cli("events", "export", env=env, cwd=tmp_path)
    assert again.returncode == 1 and "no Redis is running in" in again.stderr
    assert _processes_mentioning(str(tmp_path / "data")) == []


def test_status_warns_of_a_queue_no_live_worker_reads(redis_url: str) -> None:
    env = {"REDIS_URL": redis_url, "EVENTCORE_NAMESPACE": "st" + os.urandom(4).hex()}
    assert cli("submit", "inpaint", "--queue", "gpu-high", env=env).returncode == 0
    res = cli("status", "--json", env=env)
    assert res.returncode == 0, res.stderr
    rows = {q["queue"]: q for q in json.loads(res.stdout)["queues"]}
    assert rows["gpu-high"]["consumers"] == 0
    assert "no worker serves this queue" in rows["gpu-high"]["warning"]
    assert rows["cpu-light"]["warning"] is None
    text = cli("status", env=env).stdout
    assert "warning: queue gpu-high: no worker serves this queue: 1 task(s) wait" in text


async def test_status_says_which_projector_folds_which_shard(redis_url: str) -> None:
    from eventcore.connection import connect
    from eventcore.keys import Keys
    from eventcore.log import EventLog
    from projections.leases import ShardLease

    ns = "st" + os.urandom(4).hex()
    env = {"REDIS_URL": redis_url, "EVENTCORE_NAMESPACE": ns, "EVENTCORE_PARTITIONS": "2"}
    client = await connect(redis_url)
    try:
        log = EventLog(client, Keys(ns, 2))
        for shard in ("0", "n"):
            assert await ShardLease(log, shard, "live", holder="host-7").take()
        res = await asyncio.to_thread(cli, "status", env=env)
        assert res.returncode == 0, res.stderr
        assert "view shards: host-7 folds 0, n; no projector folds 1" in res.stdout
        as_json = await asyncio.to_thread(cli, "status", "--json", env=env)
        got = json.loads(as_json.stdout)["projectors"]
        assert got == {"0": "host-7", "1": None, "n": "host-7"}
    finally:
        await client.aclose()
