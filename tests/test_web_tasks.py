"""The /v1 task routes in process, against a real redis-server and a real
projector: submit (JSON and multipart), read-your-writes, lists, history,
results, cancel, retry, and the errors bad requests get."""

from __future__ import annotations

import cv2
import numpy as np

from eventcore.events import TaskClaimed, TaskSpec, TaskStarted, TaskSucceeded
from eventcore.ids import task_id_in_partition
from eventcore.log import EventLog, Settlement, groups
from tests.partitions import PARTITIONS
from tests.webkit import announce, j, projector, settings_for, web_client


async def test_submit_then_read_your_write(redis_url: str, log: EventLog, namespace: str) -> None:
    async with projector(log), web_client(redis_url, settings_for(namespace)) as c:
        r = await c.post("/v1/tasks", json={"kind": "noop", "params": {"x": 1}})
        assert r.status_code == 202, r.text
        body = j(r)
        assert body["queue"] == "cpu-light" and body["created"] is True
        got = await c.get(f"/v1/tasks/{body['task_id']}", params={"after": body["event_id"]})
        assert got.status_code == 200, got.text
        view = j(got)
        assert view["task_id"] == body["task_id"]
        assert view["status"] == "queued"
        assert view["params_summary"] == {"x": 1}
        assert "x-views-behind" not in got.headers


async def test_idempotency_key_header_gives_one_task(
    redis_url: str, log: EventLog, namespace: str
) -> None:
    async with web_client(redis_url, settings_for(namespace)) as c:
        first = await c.post("/v1/tasks", json={"kind": "noop"}, headers={"Idempotency-Key": "k1"})
        again = await c.post("/v1/tasks", json={"kind": "noop"}, headers={"Idempotency-Key": "k1"})
    assert (first.status_code, again.status_code) == (202, 200)
    assert j(first)["task_id"] == j(again)["task_id"]
    assert j(again)["created"] is False
    assert await log.redis.xlen(log.keys.events(0)) == 1


async def test_bad_bodies_are_4xx_naming_the_field_and_write_nothing(
    redis_url: str, log: EventLog, namespace: str
) -> None:
    async with web_client(redis_url, settings_for(namespace, max_body_bytes=1000)) as c:
        cases = [
            (c.post("/v1/tasks", json={"params": {}}), 422, "kind"),
            (c.post("/v1/tasks", json={"kind": "noop", "bogus": 1}), 422, "bogus"),
            (c.post("/v1/tasks", json={"kind": "noop", "priority": "urgent"}), 422, "priority"),
            (
                c.post("/v1/tasks", json={"kind": "noop", "max_deliveries": 0}),
                422,
                "max_deliveries",
            ),
            (
                c.post("/v1/tasks", content=b"{nope", headers={"content-type": "application/json"}),
                400,
                "JSON",
            ),
            (
                c.post("/v1/tasks", content=b"kind=noop", headers={"content-type": "text/plain"}),
                415,
                "application/json",
            ),
            (c.post("/v1/tasks", json={"kind": "noop", "params": {"p": "x" * 2000}}), 413, "1000"),
            (c.post("/v1/tasks", json={"kind": "noop", "queue": "nope"}), 400, "nope"),
        ]
        for call, status, mention in cases:
            r = await call
            assert r.status_code == status, (status, r.text)
            body = j(r)
            assert set(body) >= {"error", "detail"}
            assert mention in body["detail"], body
    assert await log.redis.exists(log.keys.events(0)) == 0


async def test_unknown_kind_is_400_once_workers_announced_their_handlers(
    redis_url: str, log: EventLog, namespace: str
) -> None:
    await announce(log, "n1", ("noop", "inpaint"))
    async with web_client(redis_url, settings_for(namespace)) as c:
        r = await c.post("/v1/tasks", json={"kind": "transmogrify"})
        assert r.status_code == 400
        assert j(r)["error"] == "unknown_kind"
        assert "transmogrify" in j(r)["detail"] and "inpaint" in j(r)["detail"]
        assert (await c.post("/v1/tasks", json={"kind": "noop"})).status_code == 202


async def test_multipart_submit_stores_files_as_blobs(
    redis_url: str, log: EventLog, namespace: str
) -> None:
    image = cv2.imencode(".png", np.full((8, 8, 3), 200, np.uint8))[1].tobytes()
    async with projector(log), web_client(redis_url, settings_for(namespace)) as c:
        r = await c.post(
            "/v1/tasks",
            data={"kind": "inpaint", "params": '{"cv2_radius": 3}'},
            files={"image": ("a.png", image, "image/png"), "mask": ("m.png", image, "image/png")},
        )
        assert r.status_code == 202, r.text
        task_id, eid = j(r)["task_id"], j(r)["event_id"]
        view = j(await c.get(f"/v1/tasks/{task_id}", params={"after": eid}))
        params = view["params_summary"]
        assert params["cv2_radius"] == 3
        submitted = (await log.history(task_id))[0].event
        blobs = c.app.state.web.blobs  # type: ignore[attr-defined]
        assert await blobs.get(submitted.spec.params["image"]) == image
        assert await blobs.get(submitted.spec.params["mask"]) == image


async def test_list_filters_and_cursor(redis_url: str, log: EventLog, namespace: str) -> None:
    async with projector(log), web_client(redis_url, settings_for(namespace)) as c:
        ids = []
        for i in range(5):
            r = await c.post("/v1/tasks", json={"kind": "noop" if i % 2 else "sleep"})
            ids.append(j(r)["task_id"])
        last = j(r)["event_id"]
        page1 = await c.get("/v1/tasks", params={"limit": 2, "after": last})
        assert page1.status_code == 200, page1.text
        p1 = j(page1)
        assert [t["task_id"] for t in p1["tasks"]] == ids[::-1][:2]
        p2 = j(await c.get("/v1/tasks", params={"limit": 2, "cursor": p1["next_cursor"]}))
        assert [t["task_id"] for t in p2["tasks"]] == ids[::-1][2:4]
        noops = j(await c.get("/v1/tasks", params={"kind": "noop"}))["tasks"]
        assert sorted(t["task_id"] for t in noops) == sorted(ids[1::2])
        bad = await c.get("/v1/tasks", params={"status": "sleeping"})
        assert bad.status_code == 422 and "sleeping" in j(bad)["detail"]
        bad = await c.get("/v1/tasks", params={"colour": "red"})
        assert bad.status_code == 422 and "colour" in j(bad)["detail"]
        bad = await c.get("/v1/tasks", params={"cursor": "zzz"})
        assert bad.status_code == 422


async def test_result_history_cancel_retry(redis_url: str, log: EventLog, namespace: str) -> None:
    async with projector(log), web_client(redis_url, settings_for(namespace)) as c:
        done = j(await c.post("/v1/tasks", json={"kind": "noop"}))
        other = j(await c.post("/v1/tasks", json={"kind": "noop"}))
        # A worker's part, by hand: claim the first and settle it with a result.
        p = log.keys.partition(done["task_id"])
        stream = log.keys.work(p, "cpu-light", "normal")
        await groups.ensure_group(log.redis, stream, log.group)
        entry, *_ = await groups.read_group(log.redis, log.group, "w1", [stream], count=2)
        assert entry.task_id == done["task_id"]
        t = done["task_id"]
        evs = (
            TaskClaimed(task_id=t, node="w1", attempt=1, deliveries=1, entry_id=entry.id),
            TaskStarted(task_id=t, node="w1", attempt=1),
            TaskSucceeded(task_id=t, node="w1", attempt=1, result={"answer": 42}),
        )
        settled = await log.settle("w1", [Settlement(entry, evs)])
        assert settled[0].ok
        result = await c.get(
            f"/v1/tasks/{done['task_id']}/result", params={"after": settled[0].event_id}
        )
        assert result.status_code == 200, result.text
        assert j(result) == {"answer": 42}
        history = j(await c.get(f"/v1/tasks/{done['task_id']}/events"))
        assert [h["event"]["type"] for h in history] == [
            "task.submitted",
            "task.claimed",
            "task.started",
            "task.succeeded",
        ]
        # Not finished: no result yet, cancel goes through, then retry makes a new task.
        pending = await c.get(
            f"/v1/tasks/{other['task_id']}/result", params={"after": other["event_id"]}
        )
        assert pending.status_code == 409 and j(pending)["error"] == "no_result"
        assert (await c.post(f"/v1/tasks/{other['task_id']}/retry")).status_code == 409
        cancel = await c.post(
            f"/v1/tasks/{other['task_id']}/cancel", json={"reason": "changed my mind"}
        )
        assert cancel.status_code == 202 and j(cancel)["outcome"] == "requested"
        again = await c.post(f"/v1/tasks/{done['task_id']}/cancel")
        assert again.status_code == 409 and j(again)["ended_as"] == "task.succeeded"
        assert (await c.post(f"/v1/tasks/{done['task_id']}/retry")).status_code == 409
        missing = await c.get("/v1/tasks/not-a-task")
        assert missing.status_code == 404 and j(missing)["error"] == "not_found"


async def test_trimmed_tasks_can_be_read_and_cancelled_but_not_rerun(
    redis_url: str, log: EventLog, namespace: str
) -> None:
    from projections.snapshot import take_snapshot
    from projections.trim import trim_log
    from tests import replaykit

    async with projector(log), web_client(redis_url, settings_for(namespace)) as c:
        failed, *_ = await replaykit.submit(log, 1)
        (entry,) = await replaykit.claim(log, 1)
        end_id = await replaykit.finish(log, entry, ok=False)
        # The log goes on in the failed task's partition, so its events are all trimmable.
        same_partition = task_id_in_partition(log.keys.partition(failed), log.keys.partitions)
        later = await log.submit(TaskSpec(kind="noop", queue="q"), task_id=same_partition)
        assert (await c.get(f"/v1/tasks/{failed}", params={"after": end_id})).status_code == 200
        after = {"after": later.event_id}
        assert (await c.get(f"/v1/tasks/{later.task_id}", params=after)).status_code == 200
        await take_snapshot(log)
        await trim_log(log)
        assert await log.history(failed) == []
        view = await c.get(f"/v1/tasks/{failed}")
        assert view.status_code == 200 and j(view)["status"] == "failed"
        again = await c.post(f"/v1/tasks/{failed}/retry")
        assert again.status_code == 410 and "trimmed" in j(again)["detail"]
        cancel = await c.post(f"/v1/tasks/{failed}/cancel")
        assert cancel.status_code in (202, 409), cancel.text


async def test_an_upload_over_the_blob_cap_is_413_naming_the_file(
    redis_url: str, log: EventLog, namespace: str
) -> None:
    from eventcore.config import BlobSettings, Settings

    settings = Settings(
        namespace=namespace, partitions=PARTITIONS, blobs=BlobSettings(max_bytes=100)
    )
    async with web_client(redis_url, settings) as c:
        r = await c.post(
            "/v1/tasks",
            data={"kind": "inpaint"},
            files={"image": ("a.png", b"x" * 101, "image/png")},
        )
    assert r.status_code == 413 and j(r)["detail"].startswith("image:"), r.text
    assert await log.redis.exists(log.keys.events(0)) == 0
