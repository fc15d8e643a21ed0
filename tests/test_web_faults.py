"""The web app when Redis is away (stopped with SIGSTOP, or killed), and
under hypothesis-generated bad bodies: answers stay 4xx/503 JSON, fast,
never a 500, and nothing is written for a refused request."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventcore.log import EventLog
from eventcore.server.process import ServerConfig, ServerProcess, free_port
from tests.conftest import server_binary
from tests.webkit import j, settings_for, web_client


@pytest.fixture
def own_server(tmp_path: Path):
    """A redis-server of the test's own, to stop, kill or fill."""
    server = ServerProcess(server_binary(), ServerConfig(tmp_path, port=free_port()))
    server.start()
    yield server
    server.stop()


@pytest.mark.slow
async def test_redis_stopped_or_gone_gives_503_within_a_second(
    own_server: ServerProcess, namespace: str
) -> None:
    server = own_server
    async with web_client(server.url, settings_for(namespace)) as c:
        assert (await c.post("/v1/tasks", json={"kind": "noop"})).status_code == 202
        assert server.pid is not None
        os.kill(server.pid, signal.SIGSTOP)
        try:
            for path in ("/v1/tasks", "/healthz"):
                started = time.monotonic()
                r = await (
                    c.post(path, json={"kind": "noop"}) if path == "/v1/tasks" else c.get(path)
                )
                took = time.monotonic() - started
                assert r.status_code == 503, r.text
                assert r.headers["retry-after"] == "1"
                assert j(r)["error"] == "unavailable"
                assert took < 1.5, f"{path} took {took:.2f}s"
        finally:
            os.kill(server.pid, signal.SIGCONT)
        # Everyone resumes once it is back.
        assert (await c.post("/v1/tasks", json={"kind": "noop"})).status_code == 202
        server.kill()
        started = time.monotonic()
        r = await c.get("/v1/tasks/0190a0f0-0000-7000-8000-000000000000")
        assert r.status_code == 503 and time.monotonic() - started < 1.5
        started = time.monotonic()
        r = await c.get("/v1/stream", headers={"Last-Event-ID": "0-0"})
        assert r.status_code == 503 and time.monotonic() - started < 1.5


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
bodies = st.one_of(
    json_values,
    st.dictionaries(
        st.sampled_from(
            [
                "kind",
                "params",
                "queue",
                "priority",
                "retry",
                "max_deliveries",
                "soft_timeout",
                "run_at",
                "delay",
                "model",
                "extra",
            ]
        ),
        json_values,
        max_size=5,
    ),
)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=bodies)
async def test_generated_bad_bodies_get_4xx_and_write_nothing(
    redis_url: str, log: EventLog, namespace: str, body: object
) -> None:
    async with web_client(redis_url, settings_for(namespace)) as c:
        r = await c.post("/v1/tasks", json=body)
    if r.status_code in (200, 202):
        # A body that happens to be valid must have been a real task.
        assert isinstance(body, dict) and isinstance(body.get("kind"), str)
        await log.redis.delete(*[k async for k in log.redis.scan_iter(f"{namespace}:*")])
        return
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert set(j(r)) >= {"error", "detail"}
    assert await log.redis.exists(log.keys.events(0)) == 0


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    raw=st.binary(max_size=200),
    ctype=st.sampled_from(
        [
            "application/json",
            "multipart/form-data; boundary=xx",
            "text/plain",
            "",
            "image/png",
            "multipart/form-data",
        ]
    ),
)
async def test_generated_raw_bodies_and_content_types(
    redis_url: str, log: EventLog, namespace: str, raw: bytes, ctype: str
) -> None:
    async with web_client(redis_url, settings_for(namespace)) as c:
        r = await c.post("/v1/tasks", content=raw, headers={"content-type": ctype})
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert await log.redis.exists(log.keys.events(0)) == 0


async def test_huge_chunked_body_is_cut_off_at_the_cap(
    redis_url: str, log: EventLog, namespace: str
) -> None:
    sent = 0

    async def two_gib():
        nonlocal sent
        chunk = b"x" * 65536
        for _ in range(2**31 // len(chunk)):
            sent += len(chunk)
            yield chunk

    async with web_client(redis_url, settings_for(namespace, max_body_bytes=1 << 20)) as c:
        r = await c.post(
            "/v1/tasks", content=two_gib(), headers={"content-type": "application/json"}
        )
    assert r.status_code == 413 and j(r)["error"] == "too_large"
    assert sent <= (1 << 20) + 2 * 65536  # read no further than the cap
    declared = 2**31
    async with web_client(redis_url, settings_for(namespace, max_body_bytes=1 << 20)) as c:
        r = await c.post(
            "/v1/tasks",
            content=b"{}",
            headers={"content-type": "application/json", "content-length": str(declared)},
        )
    assert r.status_code == 413
    assert await log.redis.exists(log.keys.events(0)) == 0


async def test_multipart_file_count_is_capped(
    redis_url: str, log: EventLog, namespace: str
) -> None:
    files = {f"f{i}": (f"{i}.png", b"x", "image/png") for i in range(4)}
    async with web_client(redis_url, settings_for(namespace, max_files=3)) as c:
        r = await c.post("/v1/tasks", data={"kind": "noop"}, files=files)
        assert r.status_code == 400 and "files" in j(r)["detail"].lower()
        dup = await c.post(
            "/v1/tasks",
            data={"kind": "noop"},
            files=[
                ("image", ("a.png", b"x", "image/png")),
                ("image", ("b.png", b"y", "image/png")),
            ],
        )
        assert dup.status_code == 422 and "image" in j(dup)["detail"]
    assert await log.redis.exists(log.keys.events(0)) == 0


@pytest.mark.slow
async def test_redis_out_of_memory_gives_507_and_no_half_written_task(
    own_server: ServerProcess, namespace: str
) -> None:
    async with web_client(own_server.url, settings_for(namespace)) as c:
        web = c.app.state.web  # type: ignore[attr-defined]
        await web.redis.config_set("maxmemory-policy", "noeviction")
        used = int((await web.redis.info("memory"))["used_memory"])
        await web.redis.config_set("maxmemory", used + 2_000_000)
        codes: dict[int, int] = {}
        accepted: list[str] = []
        for i in range(20_000):
            r = await c.post("/v1/tasks", json={"kind": "noop", "params": {"pad": "x" * 200}})
            codes[r.status_code] = codes.get(r.status_code, 0) + 1
            if r.status_code == 202:
                accepted.append(j(r)["task_id"])
            elif r.status_code == 507:
                assert j(r)["error"] == "storage_full"
                if codes[507] >= 20:
                    break
            else:
                raise AssertionError((i, r.status_code, r.text))
        assert codes.get(507, 0) >= 20 and accepted, codes
        await web.redis.config_set("maxmemory", 0)
        log = web.log
        submitted = {
            e.event.task_id
            for p in log.keys.all_partitions()
            for e in await log.read(log.keys.events(p), count=100_000)
        }
        queued = sum(
            [
                await log.redis.xlen(log.keys.work(p, "cpu-light", "normal"))
                for p in log.keys.all_partitions()
            ]
        )
        assert submitted == set(accepted)
        assert queued == len(accepted)  # every task has its work entry, no orphans
