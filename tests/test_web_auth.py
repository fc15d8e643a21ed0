"""Tokens, scopes and tenants: another tenant's task is a 404 and never shows
in a list or a feed; browsers stream with a signed, short-lived ticket."""

from __future__ import annotations

import asyncio
import json

import httpx

from eventcore.log import EventLog
from tests.webkit import (
    j,
    projector,
    served,
    settings_for,
    sse_clients_become,
    sse_events,
    web_client,
)
from web.auth import create_token, revoke_token


async def test_tokens_scopes_and_tenant_isolation(
    redis_url: str, log: EventLog, namespace: str
) -> None:
    a = await create_token(log, "alice", "acme", ("submit", "read", "stream"))
    b = await create_token(log, "bob", "globex", ("submit", "read"))
    reader = await create_token(log, "ro", "acme", ("read",))
    admin = await create_token(log, "ops", "", ("admin",))
    ha, hb = {"Authorization": f"Bearer {a}"}, {"Authorization": f"Bearer {b}"}
    async with projector(log), web_client(redis_url, settings_for(namespace, auth=True)) as c:
        assert (await c.get("/v1/tasks")).status_code == 401
        bad = await c.get("/v1/tasks", headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401 and j(bad)["error"] == "unauthorized"
        # The tenant comes from the token; a body cannot choose it.
        sub = await c.post("/v1/tasks", json={"kind": "noop"}, headers=ha)
        assert sub.status_code == 202
        smuggle = await c.post("/v1/tasks", json={"kind": "noop", "tenant": "globex"}, headers=ha)
        assert smuggle.status_code == 422
        task_id, eid = j(sub)["task_id"], j(sub)["event_id"]
        mine = await c.get(f"/v1/tasks/{task_id}", params={"after": eid}, headers=ha)
        assert mine.status_code == 200 and j(mine)["tenant"] == "acme"
        theirs = await c.get(f"/v1/tasks/{task_id}", headers=hb)
        assert theirs.status_code == 404
        for path in ("events", "result"):
            assert (await c.get(f"/v1/tasks/{task_id}/{path}", headers=hb)).status_code == 404
        assert (await c.post(f"/v1/tasks/{task_id}/cancel", headers=hb)).status_code == 404
        assert j(await c.get("/v1/tasks", headers=hb))["tasks"] == []
        assert [t["task_id"] for t in j(await c.get("/v1/tasks", headers=ha))["tasks"]] == [task_id]
        # A tenant cannot widen its list with ?tenant=.
        assert (await c.get("/v1/tasks", params={"tenant": "acme"}, headers=hb)).status_code == 422
        # Scopes.
        ro = {"Authorization": f"Bearer {reader}"}
        assert (await c.post("/v1/tasks", json={"kind": "noop"}, headers=ro)).status_code == 403
        assert (await c.get("/v1/nodes", headers=ha)).status_code == 403
        ops = {"Authorization": f"Bearer {admin}"}
        assert (await c.get("/v1/nodes", headers=ops)).status_code == 200
        seen = j(await c.get(f"/v1/tasks/{task_id}", headers=ops))
        assert seen["task_id"] == task_id


async def test_stream_is_per_tenant_and_browsers_use_tickets(
    redis_url: str, log: EventLog, namespace: str
) -> None:
    a = await create_token(log, "alice", "acme", ("submit", "read", "stream"))
    b = await create_token(log, "bob", "globex", ("submit", "read", "stream"))
    ha, hb = {"Authorization": f"Bearer {a}"}, {"Authorization": f"Bearer {b}"}
    settings = settings_for(namespace, auth=True, ticket_ttl=30)
    async with projector(log), served(redis_url, settings) as base:
        async with httpx.AsyncClient(base_url=base, timeout=10) as c:
            ticket = (await c.post("/v1/stream/ticket", headers=hb)).json()["ticket"]
            assert (await c.get("/v1/stream", params={"ticket": "x.y"})).status_code == 401
            forged = ticket[:-3] + ("AAA" if not ticket.endswith("AAA") else "BBB")
            assert (await c.get("/v1/stream", params={"ticket": forged})).status_code == 401
            # A ticket streams, and nothing else.
            assert (await c.get("/v1/tasks", params={"ticket": ticket})).status_code == 401
            async with c.stream("GET", "/v1/stream", params={"ticket": ticket}) as resp:
                assert resp.status_code == 200
                await sse_clients_become(c, 1)  # registered for live changes
                acme = (await c.post("/v1/tasks", json={"kind": "noop"}, headers=ha)).json()
                globex = (await c.post("/v1/tasks", json={"kind": "noop"}, headers=hb)).json()
                got = await sse_events(resp, limit=5, timeout=2)
    ids = {json.loads(e["data"])["id"] for e in got}
    assert globex["task_id"] in ids
    assert acme["task_id"] not in ids
    assert {e["event"] for e in got} == {"task"}  # node/queue/stats views mix tenants


async def test_revoking_a_token_ends_the_streams_it_opened(
    redis_url: str, log: EventLog, namespace: str
) -> None:
    """A stream opened with a token, or with a ticket traded for it, went on
    after the token was revoked: revoking must end what it granted at once.
    Streams of other tokens go on."""
    carol = await create_token(log, "carol", "acme", ("stream",))
    dave = await create_token(log, "dave", "acme", ("stream",))
    hc, hd = {"Authorization": f"Bearer {carol}"}, {"Authorization": f"Bearer {dave}"}

    async def to_the_end(response: httpx.Response) -> str:
        return "".join([text async for text in response.aiter_text()])

    async with served(redis_url, settings_for(namespace, auth=True)) as base:
        async with httpx.AsyncClient(base_url=base, timeout=10) as c:
            ticket = (await c.post("/v1/stream/ticket", headers=hc)).json()["ticket"]
            async with (
                c.stream("GET", "/v1/stream", headers=hc) as by_token,
                c.stream("GET", "/v1/stream", params={"ticket": ticket}) as by_ticket,
                c.stream("GET", "/v1/stream", headers=hd) as kept,
            ):
                assert {by_token.status_code, by_ticket.status_code, kept.status_code} == {200}
                assert await revoke_token(log, "carol") == 1
                for response in (by_token, by_ticket):
                    said = await asyncio.wait_for(to_the_end(response), 5)
                    assert "event: revoked" in said, said
                # The other token's stream is still open: nothing ends it.
                rest = asyncio.ensure_future(to_the_end(kept))
                done, _ = await asyncio.wait({rest}, timeout=2.5)
                assert not done, rest.result()
                rest.cancel()
