"""``/v1/history/tasks`` and ``/v1/history/stats`` over a SQL history the
SQL projector filled from a real log (SQLite and PostgreSQL), tenants from
tokens, clear errors, and ``GET /v1/tasks/{id}`` falling back to the SQL
row once a task has left the Redis views."""

from __future__ import annotations

from typing import Any

import msgspec

from eventcore.config import Settings, SqlSettings, WebSettings
from eventcore.events import TaskSpec
from eventcore.log import EventLog, Submission
from history.database import Database
from history.follower import SqlProjector
from tests.partitions import PARTITIONS
from tests.replaykit import claim, finish
from tests.sqlkit import drain
from tests.webkit import web_client
from web.auth import create_token


def _settings(namespace: str, url: str, **web: Any) -> Settings:
    return Settings(
        namespace=namespace,
        partitions=PARTITIONS,
        web=WebSettings(**web),
        sql=SqlSettings(url=url),
    )


async def _tasks(log: EventLog, tenant: str, n: int) -> list[str]:
    subs = await log.submit_many(
        [
            Submission(spec=TaskSpec(kind="noop", queue="q", tenant=tenant, params={"i": i}))
            for i in range(n)
        ]
    )
    return [s.task_id for s in subs]


async def test_history_lists_pages_and_counts(
    redis_url: str, log: EventLog, namespace: str, sql_db: Database
) -> None:
    ids = await _tasks(log, "", 7)
    for k, entry in enumerate(await claim(log, 7)):
        await finish(log, entry, ok=k % 3 != 0)  # three fail: "ValueError: no"
    await drain(SqlProjector(log, sql_db))
    url = sql_db.sa_url.render_as_string(hide_password=False)
    async with web_client(redis_url, _settings(namespace, url)) as c:
        seen: list[str] = []
        cursor = None
        while True:
            params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
            page = (await c.get("/v1/history/tasks", params=params)).json()
            seen += [t["task_id"] for t in page["tasks"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert sorted(seen) == sorted(ids) and len(seen) == 7
        failed = (await c.get("/v1/history/tasks", params={"status": "failed"})).json()
        assert len(failed["tasks"]) == 3
        assert {t["error"] for t in failed["tasks"]} == {"ValueError: no"}
        found = (await c.get("/v1/history/tasks", params={"error": "VALUEERROR"})).json()
        assert len(found["tasks"]) == 3
        stats = (await c.get("/v1/history/stats", params={"bucket": "day"})).json()
        assert stats["bucket"] == "day"
        (row,) = stats["rows"]
        assert (row["submitted"], row["ended"], row["failed"], row["succeeded"]) == (7, 7, 3, 4)
        assert row["failure_rate"] == 3 / 7
        assert row["p50"] is not None
        # Bad values: a 422 naming the field.
        for params, field in (
            ({"limit": 0}, "limit"),
            ({"status": "lost"}, "status"),
            ({"cursor": "garbage"}, "cursor"),
            ({"since": "yesterday"}, "since"),
            ({"nope": 1}, "nope"),
        ):
            bad = await c.get("/v1/history/tasks", params=params)
            assert bad.status_code == 422, (params, bad.text)
            assert field in bad.json()["detail"]
        bad = await c.get("/v1/history/stats", params={"bucket": "week"})
        assert bad.status_code == 422 and "bucket" in bad.json()["detail"]


async def test_a_tenant_sees_only_its_own_history(
    redis_url: str, log: EventLog, namespace: str, sql_db: Database
) -> None:
    mine = await _tasks(log, "acme", 2)
    await _tasks(log, "globex", 3)
    await drain(SqlProjector(log, sql_db))
    a = await create_token(log, "alice", "acme", ("read",))
    admin = await create_token(log, "ops", "", ("admin",))
    url = sql_db.sa_url.render_as_string(hide_password=False)
    async with web_client(redis_url, _settings(namespace, url, auth=True)) as c:
        assert (await c.get("/v1/history/tasks")).status_code == 401
        ha = {"Authorization": f"Bearer {a}"}
        got = (await c.get("/v1/history/tasks", headers=ha)).json()
        assert sorted(t["task_id"] for t in got["tasks"]) == sorted(mine)
        widen = await c.get("/v1/history/tasks", params={"tenant": "globex"}, headers=ha)
        assert widen.status_code == 422
        ops = {"Authorization": f"Bearer {admin}"}
        all_ = (await c.get("/v1/history/tasks", headers=ops)).json()["tasks"]
        assert len(all_) == 5
        theirs = await c.get("/v1/history/tasks", params={"tenant": "globex"}, headers=ops)
        assert len(theirs.json()["tasks"]) == 3


async def test_no_history_yet_is_a_503_naming_it(
    redis_url: str, namespace: str, tmp_path: Any
) -> None:
    path = tmp_path / "none.sqlite3"
    async with web_client(redis_url, _settings(namespace, f"sqlite:///{path}")) as c:
        res = await c.get("/v1/history/tasks")
        assert res.status_code == 503
        assert "no SQL history" in res.json()["detail"] and str(path) in res.json()["detail"]
        assert not path.exists()
        # The rest of the API does not depend on it.
        assert (await c.get("/v1/tasks")).status_code == 200
        refused = _settings(namespace, "postgresql://nobody@127.0.0.1:1/none")
    async with web_client(redis_url, refused) as c:
        res = await c.get("/v1/history/stats")
        assert res.status_code == 503 and "does not answer" in res.json()["detail"]


async def test_a_task_gone_from_the_views_is_served_from_history(
    redis_url: str, log: EventLog, namespace: str, sql_db: Database
) -> None:
    (task_id,) = await _tasks(log, "", 1)
    (entry,) = await claim(log, 1)
    await finish(log, entry)
    await drain(SqlProjector(log, sql_db))
    url = sql_db.sa_url.render_as_string(hide_password=False)
    async with web_client(redis_url, _settings(namespace, url)) as c:
        # Never folded into the Redis views here: only the SQL history has it.
        res = await c.get(f"/v1/tasks/{task_id}")
        assert res.status_code == 200, res.text
        assert res.headers["X-From-History"] == "true"
        view = msgspec.json.decode(res.content)
        assert view["status"] == "succeeded" and view["task_id"] == task_id
        missing = await c.get(f"/v1/tasks/{task_id[:-4]}0000")
        assert missing.status_code == 404
