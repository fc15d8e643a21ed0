"""Nodes, queues, stats, node control (with a real worker answering),
metrics, health and the OpenAPI document."""

from __future__ import annotations

import asyncio

from prometheus_client.parser import text_string_to_metric_families

from eventcore.log import EventLog
from tests.webkit import announce, folded, j, projector, web_client
from tests.workerkit import fast_settings, make_worker, running, wait_ended


async def test_nodes_queues_stats_control_metrics(
    redis_url: str, log: EventLog, namespace: str
) -> None:
    settings = fast_settings(namespace)
    worker = make_worker(log, settings, "w-sys", concurrency=2)
    async with projector(log), running(worker), web_client(redis_url, settings) as c:
        ids = []
        for _ in range(3):
            r = await c.post("/v1/tasks", json={"kind": "noop"})
            assert r.status_code == 202, r.text
            ids.append(j(r)["task_id"])
        for t in ids:
            assert await wait_ended(log, t) == "task.succeeded"
        await folded(log)  # the projector has folded the ends
        nodes = j(await c.get("/v1/nodes"))["nodes"]
        assert [n["node"] for n in nodes] == ["w-sys"] and nodes[0]["state"] == "online"
        queues = {q["queue"]: q for q in j(await c.get("/v1/queues"))["queues"]}
        assert queues["q"]["view"]["succeeded"] == 3
        stats = j(await c.get("/v1/stats"))
        assert stats["overall"]["totals"]["succeeded"] == 3
        assert [s["kind"] for s in stats["by_queue_kind"]] == ["noop"]

        ping = await c.post("/v1/nodes/w-sys/control", json={"command": "ping"})
        assert ping.status_code == 200, ping.text
        assert j(ping)["acks"][0]["node"] == "w-sys" and j(ping)["acks"][0]["ok"]
        pause = await c.post("/v1/nodes/w-sys/control", json={"command": "pause"})
        assert pause.status_code == 200 and j(pause)["acks"][0]["ok"]
        everyone = await c.post("/v1/nodes/*/control", json={"command": "resume"})
        assert everyone.status_code == 200 and j(everyone)["expected"] == 1
        missing = await c.post("/v1/nodes/ghost/control", json={"command": "ping"})
        assert missing.status_code == 404 and "w-sys" in j(missing)["detail"]
        bad = await c.post("/v1/nodes/w-sys/control", json={"command": "explode"})
        assert bad.status_code == 422 and "command" in j(bad)["detail"]

        text = (await c.get("/metrics")).text
        families = {f.name: f for f in text_string_to_metric_families(text)}
        tasks = {
            (s.labels["queue"], s.labels["status"]): s.value
            for s in families["eventcore_tasks"].samples
            if s.name == "eventcore_tasks_total"
        }
        assert tasks[("q", "succeeded")] == 3
        durations = [
            s
            for s in families["eventcore_task_duration_seconds"].samples
            if s.name.endswith("_count")
        ]
        assert durations and durations[0].value == 3
        assert {s.labels["state"] for s in families["eventcore_nodes"].samples} == {"online"}

        health = await c.get("/healthz")
        assert health.status_code == 200 and j(health)["status"] == "ok"
        doc = j(await c.get("/openapi.json"))
        assert "/v1/tasks" in doc["paths"] and "post" in doc["paths"]["/v1/tasks"]
        assert "TaskView" in doc["components"]["schemas"]
        page = await c.get("/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert "/v1/stream" in page.text and "EventSource" in page.text
        assert (await c.get("/nope")).status_code == 404
        assert j(await c.delete("/v1/tasks"))["error"] == "method_not_allowed"


async def test_readyz_waits_for_a_live_node_and_folded_views(
    redis_url: str, log: EventLog, namespace: str
) -> None:
    """/readyz is 503 naming what is missing until a node serving a queue has
    announced itself and a projector has folded into the views in use; then
    200. /healthz (liveness) is 200 all along."""
    settings = fast_settings(namespace)
    async with web_client(redis_url, settings) as c:
        assert (await c.get("/healthz")).status_code == 200
        first = await c.get("/readyz")
        assert first.status_code == 503
        body = j(first)
        assert body["error"] == "not_ready"
        assert body["checks"]["redis"]["ok"] is True
        assert body["checks"]["views"]["ok"] is False
        assert body["checks"]["nodes"]["ok"] is False
        assert "no live node serves a queue" in body["detail"]

        await announce(log, "w-ready", ("noop",))
        before_projector = j(await c.get("/readyz"))
        assert before_projector["checks"]["nodes"] == {
            "ok": True,
            "serving": {"w-ready": ["cpu-light"]},
        }
        assert before_projector["checks"]["views"]["ok"] is False
        assert "projector" in before_projector["detail"]

        async with projector(log):
            deadline = asyncio.get_running_loop().time() + 10
            while (ready := await c.get("/readyz")).status_code != 200:
                assert asyncio.get_running_loop().time() < deadline, ready.text
                await asyncio.sleep(0.05)
        body = j(ready)
        assert body["status"] == "ready" and all(v["ok"] for v in body["checks"].values())


async def test_readyz_is_503_when_redis_does_not_answer(namespace: str) -> None:
    from eventcore.server.process import free_port

    async with web_client(f"redis://127.0.0.1:{free_port()}/0", fast_settings(namespace)) as c:
        r = await c.get("/readyz")
    assert r.status_code == 503
    body = j(r)
    assert body["error"] == "not_ready" and body["checks"]["redis"]["ok"] is False
    assert "Redis" in body["detail"]


async def test_a_queue_with_work_and_no_live_reader_shows_as_stranded(
    redis_url: str, log: EventLog, namespace: str
) -> None:
    """/v1/queues and /metrics say which queues no live node reads while
    work waits there, and how many live nodes read the others."""
    import msgspec

    from eventcore.config import QueueConfig
    from eventcore.events import Capabilities, NodeStarted, TaskSpec
    from eventcore.nodes import append_node_event

    settings = msgspec.structs.replace(
        fast_settings(namespace),
        queues=(QueueConfig(name="gpu", gpu=True), QueueConfig(name="cpu")),
    )
    caps = Capabilities(cpu_cores=2, memory_mb=1024)
    for node in ("cpu-1", "cpu-2"):
        started = NodeStarted(node=node, capabilities=caps, queues=("cpu",), concurrency=1)
        await append_node_event(log, started)
    await log.submit(TaskSpec(kind="noop", queue="gpu"))  # pinned: stays there
    async with web_client(redis_url, settings) as c:
        queues = {q["queue"]: q for q in j(await c.get("/v1/queues"))["queues"]}
        gpu, cpu = queues["gpu"], queues["cpu"]
        assert (gpu["consumers"], gpu["served"], gpu["stranded"]) == (0, False, 1)
        assert "no worker serves this queue" in gpu["warning"]
        assert (cpu["consumers"], cpu["served"], cpu["stranded"], cpu["warning"]) == (
            2,
            True,
            0,
            None,
        )
        text = (await c.get("/metrics")).text
        families = {f.name: f for f in text_string_to_metric_families(text)}
        consumers = {
            s.labels["queue"]: s.value for s in families["eventcore_queue_consumers"].samples
        }
        unserved = {
            s.labels["queue"]: s.value for s in families["eventcore_queue_unserved"].samples
        }
        assert consumers == {"gpu": 0, "cpu": 2}
        assert unserved == {"gpu": 1, "cpu": 0}
