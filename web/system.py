"""Nodes, queues, stats, node control, health, readiness, metrics and the OpenAPI document."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Annotated, Any

import msgspec
from msgspec import Meta
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from eventcore.control import BROADCAST, issue_and_wait
from eventcore.events import ControlKind
from eventcore.nodes import live_nodes
from projections.read import read_queue_health
from web.errors import ApiError
from web.limits import read_json
from web.metrics import CONTENT_TYPE, render_views
from web.openapi import document
from web.responses import json_response
from web.state import state_of

__all__ = ["routes"]

logger = logging.getLogger(__name__)


async def get_nodes(request: Request) -> Response:
    web = state_of(request)
    await web.auth.principal(request, "admin" if web.auth.enabled else "read")
    nodes = await (await web.store()).nodes()
    return json_response({"nodes": [nodes[n] for n in sorted(nodes)]})


async def get_queues(request: Request) -> Response:
    web = state_of(request)
    # Counts over every tenant: with auth on, only an admin token sees them.
    await web.auth.principal(request, "admin")
    queues = await (await web.store()).queues()
    declared = [q.name for q in web.settings.queues]
    health = await read_queue_health(
        web.log, declared, queues, silent_for=web.settings.worker.heartbeat_timeout
    )
    out = []
    for name, h in health.items():
        out.append(
            {
                "queue": name,
                "declared": name in declared,
                "consumers": h.consumers,
                "served": h.served,
                "stranded": h.stranded,
                "warning": h.warning,
                "view": queues.get(name),
            }
        )
    return json_response({"queues": out})


async def get_stats(request: Request) -> Response:
    web = state_of(request)
    # Counts over every tenant: with auth on, only an admin token sees them.
    await web.auth.principal(request, "admin")
    overall, by_scope = await (await web.store()).stats()
    return json_response(
        {
            "overall": overall,
            "by_queue_kind": [by_scope[k] for k in sorted(by_scope)],
        }
    )


class ControlRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    command: ControlKind
    args: dict[str, Any] = {}
    timeout: Annotated[float, Meta(gt=0, le=60)] = 5.0


async def control(request: Request) -> Response:
    """Send a command to a node (``*``: every live node) and wait for the ack(s)."""
    web = state_of(request)
    who = await web.auth.principal(request, "admin")
    node = request.path_params["node"]
    req = await read_json(request, ControlRequest)
    alive = await live_nodes(web.log, silent_for=web.settings.worker.heartbeat_timeout)
    if node != BROADCAST and node not in alive:
        raise ApiError(
            404,
            "not_found",
            f"no live node {node!r}; live: " + (", ".join(sorted(alive)) or "none"),
        )
    expect = len(alive) if node == BROADCAST else 1
    acks = await issue_and_wait(
        web.waiting_log,
        node,
        req.command,
        req.args,
        expect=max(expect, 1),
        timeout=req.timeout,
        by=who.name,
    )
    body = {
        "command": req.command.value,
        "target": node,
        "expected": expect,
        "acks": [{"node": a.node, "ok": a.ok, "detail": a.detail} for a in acks],
    }
    if len(acks) < expect:
        return json_response(
            {
                **body,
                "error": "timeout",
                "detail": f"{len(acks)} of {expect} acks within {req.timeout}s",
            },
            504,
        )
    return json_response(body, 200 if all(a.ok for a in acks) else 409)


async def healthz(request: Request) -> Response:
    """200 when Redis answers, with the projector's lag; 503 otherwise."""
    web = state_of(request)
    started = time.perf_counter()
    await web.redis.ping()
    store = await web.store()
    marks = await store.watermark()
    return JSONResponse(
        {
            "status": "ok",
            "redis_ms": round((time.perf_counter() - started) * 1000, 2),
            "views": store.ns,
            "watermark": marks,
            "sse_clients": len(web.hub.clients),
        }
    )


async def readyz(request: Request) -> Response:
    """200 when this deployment can take work, else 503 naming what is missing.

    Three checks: Redis answers; the views in use are being folded (a
    projector has written their watermark, which it does with the first
    batch it folds, and a node's announcement is such a batch); and a live
    node (heard from within ``worker.heartbeat_timeout``) serves at least one
    queue. ``/healthz`` answers whether the web process itself is up.
    """
    web = state_of(request)
    checks: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    started = time.perf_counter()
    try:
        await web.redis.ping()
        checks["redis"] = {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 2)}
        store = await web.store()
        marks = await store.watermark()
        checks["views"] = {"ok": bool(marks), "views": store.ns, "watermark": marks}
        if not marks:
            problems.append(f"no projector has folded into the views {store.ns!r} yet")
        alive = await live_nodes(web.log, silent_for=web.settings.worker.heartbeat_timeout)
        serving = {n: list(s.queues) for n, s in sorted(alive.items()) if s.queues}
        checks["nodes"] = {"ok": bool(serving), "serving": serving}
        if not serving:
            problems.append("no live node serves a queue")
    except RedisError as exc:
        # A probe's answer, not a failed request: reported in the body, logged
        # quietly, since a load balancer asks every few seconds.
        logger.info("readyz: Redis does not answer: %s", exc)
        checks["redis"] = {"ok": False, "detail": str(exc)}
        problems = [f"Redis does not answer: {exc}"]
        for name in ("views", "nodes"):
            checks.setdefault(name, {"ok": False, "detail": "not checked: Redis does not answer"})
    if problems:
        body = {"error": "not_ready", "detail": "; ".join(problems), "checks": checks}
        return JSONResponse(body, 503, headers={"Retry-After": "1"})
    return JSONResponse({"status": "ready", "checks": checks})


async def metrics(request: Request) -> Response:
    web = state_of(request)
    # Counts over every tenant: with auth on, only an admin token sees them.
    await web.auth.principal(request, "admin")
    store = await web.store()
    queues = await store.queues()
    nodes = await store.nodes()
    _, by_scope = await store.stats()
    timeout = web.settings.worker.heartbeat_timeout
    declared = [q.name for q in web.settings.queues]
    health = await read_queue_health(web.log, declared, queues, silent_for=timeout)
    body = render_views(web.metrics, queues, nodes, by_scope.items(), timeout, health)
    return Response(body, media_type=CONTENT_TYPE)


DASHBOARD = Path(__file__).with_name("static") / "dashboard.html"


async def dashboard(request: Request) -> Response:
    """A one-page dashboard: queues, nodes and recent tasks, kept live by the
    feed. It only reads the JSON API, with the token the user gives it."""
    return HTMLResponse(DASHBOARD.read_text(), headers={"Cache-Control": "no-cache"})


async def openapi(request: Request) -> Response:
    return JSONResponse(document(request.app, request.app.state.api_bodies))


# Request bodies, for /openapi.json.
BODIES = {("POST", "/v1/nodes/{node}/control"): ControlRequest}

routes = [
    Route("/", dashboard, methods=["GET"]),
    Route("/v1/nodes", get_nodes, methods=["GET"]),
    Route("/v1/nodes/{node}/control", control, methods=["POST"]),
    Route("/v1/queues", get_queues, methods=["GET"]),
    Route("/v1/stats", get_stats, methods=["GET"]),
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
    Route("/openapi.json", openapi, methods=["GET"]),
]
