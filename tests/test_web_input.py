"""Bad input that used to answer 500 (or pass when it should not): each case
is a 4xx JSON error naming the field or the problem, and nothing is written
to Redis for it (no stream entry, no blob, no idempotency key)."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventcore.keys import Keys
from eventcore.log import EventLog
from tests.webkit import announce, j, settings_for, web_client
from web.auth import create_token, revoke_token

# Keys a refused request may leave: the auth tables, nothing of a task.
HARMLESS = (":web:tokens", ":web:secret")


async def written(log: EventLog) -> list[str]:
    """Every key of the test's namespace but the auth tables."""
    keys = [k.decode() async for k in log.redis.scan_iter(log.keys.all_keys_pattern())]
    return sorted(k for k in keys if not k.endswith(HARMLESS))


def refused(r: httpx.Response, mention: str, statuses: tuple[int, ...] = (422,)) -> None:
    assert r.status_code in statuses, (mention, r.status_code, r.text)
    body = j(r)
    assert set(body) >= {"error", "detail"}, body
    assert mention in body["detail"], (mention, body)


def nested(depth: int, leaf: Any = 1) -> bytes:
    return b"[" * depth + str(leaf).encode() + b"]" * depth


PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32


# -- 1. multipart params that are JSON but not an object ----------------------------


async def test_multipart_params_that_are_not_an_object_are_422(
    redis_url: str, log: EventLog, namespace: str
) -> None:
    """``-F 'params=[1,2]'`` was a 500: the form's params went through
    ``dict()`` before their type was checked."""
    async with web_client(redis_url, settings_for(namespace)) as c:
        for params in ("[1,2]", '"text"', "3", "true", "[[1, 2]]"):
            r = await c.post(
                "/v1/tasks",
                data={"kind": "noop", "params": params},
                files={"image": ("a.png", PNG, "image/png")},
            )
            refused(r, "params")
    assert await written(log) == []


# -- 2. list query numbers ----------------------------------------------------------


async def test_list_query_numbers_that_are_not_sane_are_422_naming_them(
    redis_url: str, log: EventLog, namespace: str
) -> None:
    """``?limit=1.5`` was a 500 (the fallback that named the bad parameter
    found none, as 1.5 is a number); ``?until=1e308`` overflowed."""
    async with web_client(redis_url, settings_for(namespace)) as c:
        for name, value in [
            ("limit", "1.5"),
            ("limit", "0.0"),
            ("limit", "1e16"),
            ("limit", "1_0"),
            ("limit", "\u0661\u0660"),
            ("limit", "0"),
            ("limit", "501"),
            ("limit", "x"),
            ("since", "1e308"),
            ("since", "inf"),
            ("since", "nan"),
            ("until", "-inf"),
            ("until", "1e308"),
            ("since", "1_000"),
        ]:
            refused(await c.get("/v1/tasks", params={name: value}), name)
        ok = await c.get("/v1/tasks", params={"limit": "10", "since": "0", "until": "1.5e9"})
        assert ok.status_code == 200, ok.text


# -- 3. deep nesting ----------------------------------------------------------------


async def test_deeply_nested_json_is_4xx_everywhere_a_body_is_decoded(
    redis_url: str, log: EventLog, namespace: str
) -> None:
    """JSON nested about 1,000 deep made msgspec raise RecursionError, which
    is not a DecodeError: a 500 on every route that decodes a body."""
    deep = nested(1000)
    jh = {"content-type": "application/json"}
    async with web_client(redis_url, settings_for(namespace)) as c:
        body = b'{"kind": "noop", "params": {"p": ' + deep + b"}}"
        refused(await c.post("/v1/tasks", content=body, headers=jh), "nested", (400, 422))
        # Shallow enough to decode, too deep to keep: the cap names the field.
        r = await c.post("/v1/tasks", json={"kind": "noop", "params": {"p": [[[[[[[1]]]]]]] * 1}})
        assert r.status_code == 202, r.text
        await log.redis.delete(*await written(log))
        refused(
            await c.post(
                "/v1/tasks",
                content=b'{"kind": "noop", "params": {"p": ' + nested(100) + b"}}",
                headers=jh,
            ),
            "params",
        )
        form = await c.post(
            "/v1/tasks",
            data={"kind": "noop", "params": '{"p": ' + deep.decode() + "}"},
            files={"image": ("a.png", PNG, "image/png")},
        )
        refused(form, "nested", (400, 422))
        ctl = b'{"command": "ping", "args": {"a": ' + deep + b"}}"
        refused(await c.post("/v1/nodes/n1/control", content=ctl, headers=jh), "nested", (400, 422))
        ctl = b'{"command": "ping", "args": {"a": ' + nested(100) + b"}}"
        refused(await c.post("/v1/nodes/n1/control", content=ctl, headers=jh), "args")
        for path in (
            "/api/v1/inpaint",
            "/api/v1/model",
            "/api/v1/adjust_mask",
            "/api/v1/run_plugin_gen_image",
        ):
            r = await c.post(path, content=b'{"x": ' + deep + b"}", headers=jh)
            refused(r, "nested", (400, 422))
            assert j(r)["errors"] == j(r)["detail"]
    assert await written(log) == []


# -- 4, 5, 6. numbers out of range --------------------------------------------------

YEAR = 365.25 * 86400


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"run_at": 1e308}, "run_at"),
        ({"delay": 1e308}, "delay"),
        ({"run_at": time.time() + 1000 * YEAR}, "run_at"),
        ({"run_at": time.time() + 2 * YEAR}, "run_at"),
        ({"delay": 2 * YEAR}, "delay"),
        ({"run_at": -5}, "run_at"),
        ({"max_deliveries": 2**70}, "max_deliveries"),
        ({"max_deliveries": 10**6}, "max_deliveries"),
        ({"params": {"n": 2**70}}, "params"),
        ({"params": {"n": -(2**64)}}, "params"),
        ({"params": {"a": [{"b": 2**64}]}}, "params"),
        ({"hard_timeout": 1e308}, "hard_timeout"),
        ({"soft_timeout": 1e308}, "soft_timeout"),
        ({"soft_timeout": 60, "hard_timeout": 30}, "soft_timeout"),
        ({"retry": {"delay": -1}}, "retry.delay"),
        ({"retry": {"cap": -1}}, "retry.cap"),
        ({"retry": {"cap": 1e308}}, "retry.cap"),
        ({"retry": {"max_retries": -1}}, "retry.max_retries"),
        ({"retry": {"max_retries": 2**70}}, "retry.max_retries"),
        ({"retry": {"jitter": 2}}, "retry.jitter"),
    ],
)
async def test_numbers_out_of_bounds_are_422_naming_the_field(
    redis_url: str, log: EventLog, namespace: str, change: dict, field: str
) -> None:
    """Far-future ``run_at``/``delay`` overflowed (``OverflowError``), integers
    beyond 64 bits could not be encoded, and absurd timeouts and retry
    delays were accepted: all are refused with the documented limits."""
    async with web_client(redis_url, settings_for(namespace)) as c:
        refused(await c.post("/v1/tasks", json={"kind": "noop", **change}), field)
    assert await written(log) == []


async def test_numbers_out_of_bounds_in_a_form_are_422(
    redis_url: str, log: EventLog, namespace: str
) -> None:
    """A form's text fields are converted leniently, so ``inf`` is a float."""
    async with web_client(redis_url, settings_for(namespace)) as c:
        for name, value in [
            ("run_at", "inf"),
            ("run_at", "1e308"),
            ("delay", "inf"),
            ("delay", "nan"),
            ("max_deliveries", str(2**70)),
            ("hard_timeout", "1e308"),
            ("params", f'{{"n": {2**70}}}'),
            ("retry", '{"delay": -1}'),
        ]:
            r = await c.post(
                "/v1/tasks",
                data={"kind": "noop", name: value},
                files={"image": ("a.png", PNG, "image/png")},
            )
            refused(r, name)
    assert await written(log) == []


async def test_numbers_within_the_limits_are_taken(
    redis_url: str, log: EventLog, namespace: str
) -> None:
    body = {
        "kind": "noop",
        "params": {"big": 2**64 - 1, "small": -(2**63)},
        "delay": 30 * 86400,
        "max_deliveries": 1000,
        "soft_timeout": 60,
        "hard_timeout": 7 * 86400,
        "retry": {"max_retries": 100, "delay": 0, "cap": 86400, "jitter": 1},
    }
    async with web_client(redis_url, settings_for(namespace)) as c:
        r = await c.post("/v1/tasks", json=body)
    assert r.status_code == 202, r.text


# -- 7. no blob for a refused multipart submit -------------------------------------


async def test_a_refused_multipart_submit_stores_no_blob(
    redis_url: str, log: EventLog, namespace: str
) -> None:
    """Files were stored as blobs before the request was checked and routed,
    so every refused upload left a blob behind until its TTL."""
    files = {"image": ("a.png", PNG, "image/png"), "mask": ("m.png", PNG + b"m", "image/png")}
    async with web_client(redis_url, settings_for(namespace)) as c:
        for data, status, mention in [
            ({"kind": "noop", "priority": "urgent"}, 422, "priority"),
            ({"kind": "noop", "queue": "nope"}, 400, "nope"),
            ({"kind": "noop", "bogus": "1"}, 422, "bogus"),
            ({"params": "{}"}, 422, "kind"),
        ]:
            refused(await c.post("/v1/tasks", data=data, files=files), mention, (status,))
    assert await written(log) == []
    # The IOPaint route too: a kind no worker offers is refused before its images are kept.
    await announce(log, "n1", ("noop",))
    async with web_client(redis_url, settings_for(namespace, result_timeout=1)) as c:
        r = await c.post("/api/v1/inpaint", json={"image": _b64(), "mask": _b64()})
        refused(r, "inpaint", (400,))
    assert [k for k in await written(log) if ":blob:" in k or k.endswith(":events")] == []
    async with web_client(redis_url, settings_for(namespace)) as c:
        ok = await c.post("/v1/tasks", data={"kind": "noop"}, files=files)
    assert ok.status_code == 202, ok.text
    assert len([k for k in await written(log) if ":blob:" in k]) == 2


def _b64() -> str:
    import base64

    import cv2
    import numpy as np

    data = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    return "data:image/png;base64," + base64.b64encode(data).decode()


# -- 8. stream ids ------------------------------------------------------------------

BAD_IDS = [
    "1_000-0",
    "\u0661\u0660\u0660\u0660-0",
    "1000-0_1",
    " 1000-0",
    "1000-",
    "-0",
    "1000",
    "+1000-0",
    "18446744073709551616-0",
    "0-18446744073709551616",
    "123456789012345678901-0",
]


def test_stream_id_parser_is_strict() -> None:
    from eventcore.ids import parse_stream_id, stream_id_key

    assert parse_stream_id("1714564800000-7") == (1714564800000, 7)
    assert parse_stream_id("18446744073709551615-18446744073709551615") == (2**64 - 1,) * 2
    for bad in BAD_IDS:
        with pytest.raises(ValueError):
            parse_stream_id(bad)
        if bad != "1000":  # stream_id_key keeps "ms" alone as seq 0
            with pytest.raises(ValueError):
                stream_id_key(bad)
    assert stream_id_key("1700") == (1700, 0)


async def test_user_given_stream_ids_are_parsed_strictly(
    redis_url: str, log: EventLog, namespace: str
) -> None:
    """``Last-Event-ID: 1_000-0`` (and Arabic-Indic digits) passed Python's
    ``int()`` and was answered with a misleading ``resync``."""
    task = "0190a0f0-0000-7000-8000-000000000000"
    async with web_client(redis_url, settings_for(namespace)) as c:
        for bad in BAD_IDS:
            header = {"Last-Event-ID": bad.encode()}  # UTF-8 on the wire
            refused(await c.get("/v1/stream", headers=header), "Last-Event-ID")
            refused(await c.get("/v1/stream", params={"last_event_id": bad}), "Last-Event-ID")
            refused(await c.get("/v1/tasks", params={"after": bad}), "after")
            refused(await c.get(f"/v1/tasks/{task}", params={"after": bad}), "after")
        for bad in ("\u0661\u0660:" + task, "1_0:" + task, "10:nope", "99999999999999999999999:x"):
            refused(await c.get("/v1/tasks", params={"cursor": bad}), "cursor")


def test_points_given_as_ids_are_parsed_strictly() -> None:
    from eventcore.errors import EventcoreError
    from projections.points import parse_point

    assert parse_point("1000-5").entry_id == "1000-5"
    for bad in ("\u0661\u0660\u0660\u0660-0", "18446744073709551616-0"):
        with pytest.raises(EventcoreError):
            parse_point(bad)


# -- 9. idempotency keys of tenants with ':' ---------------------------------------


def test_idempotency_keys_of_different_tenants_never_collide() -> None:
    keys = Keys("ec")
    pairs = [("acme", "x:k2"), ("acme:x", "k2"), ("acme%3Ax", "k2"), ("", "acme:x:k2")]
    built = [keys.idempotency(0, t, k) for t, k in pairs]
    assert len(set(built)) == len(pairs), built
    # Tenants without ':' or '%' keep the key they always had.
    assert keys.idempotency(0, "acme", "k1") == "ec:{p0}:idem:acme:k1"
    assert keys.idempotency(0, "", "k1") == "ec:{p0}:idem::k1"


async def test_tenants_whose_names_contain_a_colon_get_their_own_tasks(
    redis_url: str, log: EventLog, namespace: str
) -> None:
    """``acme`` + key ``x:k2`` and ``acme:x`` + key ``k2`` were one Redis key:
    the second tenant got the first tenant's task id back."""
    a = await create_token(log, "a", "acme", ("submit", "read"))
    b = await create_token(log, "b", "acme:x", ("submit", "read"))
    async with web_client(redis_url, settings_for(namespace, auth=True)) as c:
        first = await c.post(
            "/v1/tasks",
            json={"kind": "noop"},
            headers={"Authorization": f"Bearer {a}", "Idempotency-Key": "x:k2"},
        )
        second = await c.post(
            "/v1/tasks",
            json={"kind": "noop"},
            headers={"Authorization": f"Bearer {b}", "Idempotency-Key": "k2"},
        )
    assert (first.status_code, second.status_code) == (202, 202), (first.text, second.text)
    assert j(first)["task_id"] != j(second)["task_id"]


# -- 10. revoked tokens end their tickets -------------------------------------------


async def test_a_ticket_stops_working_when_its_token_is_revoked(
    redis_url: str, log: EventLog, namespace: str
) -> None:
    token = await create_token(log, "carol", "acme", ("read", "stream"))
    async with web_client(redis_url, settings_for(namespace, auth=True, ticket_ttl=60)) as c:
        got = await c.post("/v1/stream/ticket", headers={"Authorization": f"Bearer {token}"})
        assert got.status_code == 200, got.text
        ticket = j(got)["ticket"]
        web = c.app.state.web  # type: ignore[attr-defined]
        who = await web.auth.redeem(ticket)
        assert (who.name, who.tenant) == ("carol", "acme")
        assert await revoke_token(log, "carol") == 1
        r = await c.get("/v1/stream", params={"ticket": ticket})
        assert r.status_code == 401 and "revoked" in j(r)["detail"], r.text


# -- 11. system-wide counts need admin ----------------------------------------------


async def test_system_wide_counts_need_the_admin_scope(
    redis_url: str, log: EventLog, namespace: str
) -> None:
    """A ``read`` token of one tenant saw every tenant's counts in
    ``/v1/queues``, ``/v1/stats`` and ``/metrics`` (which took no token at all)."""
    reader = await create_token(log, "ro", "acme", ("read", "submit", "stream"))
    admin = await create_token(log, "ops", "", ("admin",))
    async with web_client(redis_url, settings_for(namespace, auth=True)) as c:
        for path in ("/v1/queues", "/v1/stats", "/metrics"):
            assert (await c.get(path)).status_code == 401
            r = await c.get(path, headers={"Authorization": f"Bearer {reader}"})
            refused(r, "admin", (403,))
            ok = await c.get(path, headers={"Authorization": f"Bearer {admin}"})
            assert ok.status_code == 200, (path, ok.text)
    async with web_client(redis_url, settings_for(namespace)) as c:
        for path in ("/v1/queues", "/v1/stats", "/metrics"):
            assert (await c.get(path)).status_code == 200  # auth off: open as before


# -- 12. a result asked for too early -------------------------------------------------


async def test_a_result_asked_for_before_the_task_ends_is_409_with_retry_after(
    redis_url: str, log: EventLog, namespace: str
) -> None:
    from tests.webkit import projector

    async with projector(log), web_client(redis_url, settings_for(namespace)) as c:
        sub = j(await c.post("/v1/tasks", json={"kind": "noop"}))
        r = await c.get(f"/v1/tasks/{sub['task_id']}/result", params={"after": sub["event_id"]})
    refused(r, "queued", (409,))
    assert r.headers["retry-after"] == "1"
    assert r.headers["content-type"] == "application/json"


# -- 13. the API description -----------------------------------------------------


async def test_openapi_says_a_503_on_submit_is_outcome_unknown_and_shows_the_limits(
    redis_url: str, namespace: str
) -> None:
    async with web_client(redis_url, settings_for(namespace)) as c:
        doc = j(await c.get("/openapi.json"))
    post = doc["paths"]["/v1/tasks"]["post"]
    assert "Idempotency-Key" in post["responses"]["503"]["description"]
    assert "unknown" in post["description"] and "Idempotency-Key" in post["description"]
    assert [p["name"] for p in post["parameters"]] == ["Idempotency-Key"]
    retry = doc["components"]["schemas"]["RetryRequest"]["properties"]
    assert retry["delay"]["maximum"] == 86400 and retry["jitter"]["maximum"] == 1
    assert "Retry-After" in doc["paths"]["/v1/tasks/{task_id}/result"]["get"]["description"]


def test_a_retry_request_defaults_to_the_retry_policy_defaults() -> None:
    from eventcore.events import RetryPolicy
    from web.submit import RetryRequest

    assert RetryRequest().policy() == RetryPolicy()


# -- property: nothing a client sends is a 5xx or a write --------------------------

big_numbers = st.one_of(
    st.integers(min_value=-(2**80), max_value=2**80),
    st.sampled_from([2**63, 2**64, -(2**63) - 1, 10**30, 1e308, -1e308, 1e-320, 0.0, -0.0]),
    st.floats(allow_nan=False, allow_infinity=False),
)
leaves = st.one_of(st.none(), st.booleans(), big_numbers, st.text(max_size=6))
values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=10,
)
SUBMIT_FIELDS = [
    "kind",
    "params",
    "queue",
    "priority",
    "retry",
    "max_deliveries",
    "soft_timeout",
    "hard_timeout",
    "run_at",
    "delay",
    "idempotency_key",
]
INPAINT_FIELDS = ["image", "mask", "sd_seed", "ldm_steps", "cv2_radius", "hd_strategy", "x"]


@st.composite
def raw_bodies(draw: st.DrawFn, fields: list[str]) -> bytes:
    """A JSON body: an object of known fields with extreme or odd values,
    sometimes a value nested far too deep, sometimes not an object at all."""
    import msgspec

    shape = draw(st.sampled_from(["object", "deep", "other"]))
    if shape == "other":
        return msgspec.json.encode(draw(values))
    body = draw(st.dictionaries(st.sampled_from(fields), values, max_size=6))
    if "kind" in fields and draw(st.booleans()):
        body["kind"] = "noop"
    raw = msgspec.json.encode(body)
    if shape == "deep":
        depth = draw(st.sampled_from([33, 64, 500, 999, 1000, 5000]))
        field = draw(st.sampled_from(fields)).encode()
        deep = draw(st.sampled_from([b"[", b'{"a":']))
        close = b"]" if deep == b"[" else b"}"
        inner = deep * depth + b"1" + close * depth
        raw = b'{"' + field + b'": ' + inner + (b", " + raw[1:] if len(raw) > 2 else b"}")
    return raw


# Each example starts the app (its lifespan, its clients): 150 keep the test
# well inside its timeout on a loaded 2-core machine.
@pytest.mark.timeout(300)
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(path=st.sampled_from(["/v1/tasks", "/api/v1/inpaint"]), data=st.data())
async def test_generated_bodies_never_get_5xx_nor_write_when_refused(
    redis_url: str, log: EventLog, namespace: str, path: str, data: st.DataObject
) -> None:
    body = data.draw(raw_bodies(SUBMIT_FIELDS if path == "/v1/tasks" else INPAINT_FIELDS))
    settings_ = settings_for(namespace, result_timeout=0.05)
    async with web_client(redis_url, settings_) as c:
        r = await c.post(path, content=body, headers={"content-type": "application/json"})
    if r.status_code in (200, 202, 504):
        # Valid by chance: a real task (the IOPaint route waited for it in vain).
        await log.redis.delete(*await written(log))
        return
    assert 400 <= r.status_code < 500, (r.status_code, r.text, body[:200])
    assert set(j(r)) >= {"error", "detail"}
    assert await written(log) == [], body[:200]
