"""Helpers for web tests: the app in process (httpx over ASGI, lifespan run)
against the session's redis-server, under the test's namespace."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec

from eventcore.config import Settings, WebSettings
from eventcore.events import Capabilities, NodeStarted
from eventcore.log import EventLog
from eventcore.nodes import append_node_event
from projections.read import wait_for
from projections.runner import Projector
from projections.store import ViewStore
from tests.partitions import PARTITIONS
from web.app import create_app


def settings_for(namespace: str, **web: Any) -> Settings:
    return Settings(namespace=namespace, partitions=PARTITIONS, web=WebSettings(**web))


@contextlib.asynccontextmanager
async def web_client(redis_url: str, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, redis_url)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            client.app = app  # type: ignore[attr-defined]
            yield client


@contextlib.asynccontextmanager
async def projector(log: EventLog) -> AsyncIterator[Projector]:
    """A projector folding into the live views in the background."""
    proj = Projector(log, ViewStore(log), consumer="test-projector")
    stop = asyncio.Event()
    task = asyncio.create_task(proj.run(stop, block_ms=50))
    try:
        yield proj
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def folded(log: EventLog, timeout: float = 10.0) -> None:
    """Wait until the live views (and so the feed) include every event the
    log holds now, in every partition: the projector's watermark, not the clock."""
    store = ViewStore(log)
    for p in log.keys.all_partitions():
        stream = log.keys.events(p)
        newest = await log.redis.xrevrange(stream, count=1)
        if newest:
            last = newest[0][0].decode()
            assert await wait_for(store, stream, last, timeout=timeout), (
                f"the views did not reach {stream} {last} within {timeout}s"
            )


async def sse_clients_become(client: httpx.AsyncClient, count: int, timeout: float = 10.0) -> None:
    """Wait until the served app's feed hub has ``count`` SSE clients, as
    ``/healthz`` reports them: a stream is registered for live changes (or
    cut off) only some time after its response headers arrive."""
    deadline = asyncio.get_running_loop().time() + timeout
    while (now := (await client.get("/healthz")).json()["sse_clients"]) != count:
        assert asyncio.get_running_loop().time() < deadline, f"{now} SSE clients, not {count}"
        await asyncio.sleep(0.01)


async def announce(log: EventLog, node: str, handlers: tuple[str, ...]) -> None:
    caps = Capabilities(cpu_cores=2, memory_mb=1024, handlers=handlers)
    await append_node_event(log, NodeStarted(node=node, capabilities=caps, queues=("cpu-light",)))


def j(response: httpx.Response) -> Any:
    return msgspec.json.decode(response.content)


@contextlib.asynccontextmanager
async def served(redis_url: str, settings: Settings) -> AsyncIterator[str]:
    """The app served by uvicorn on a free port in this event loop; yields its
    base URL. For what the in-process transport cannot do (streaming SSE)."""
    import uvicorn

    from eventcore.server.process import free_port

    app = create_app(settings, redis_url)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


_line_iters: dict[int, Any] = {}


async def sse_events(
    response: httpx.Response, *, limit: int, timeout: float = 10.0
) -> list[dict[str, str]]:
    """Up to ``limit`` SSE events (``id``, ``event``, ``data``) from a streaming
    response, waiting ``timeout`` seconds at most; pings (comments) are
    skipped. Call again on the same response for the next ones."""
    lines = _line_iters.setdefault(id(response), response.aiter_lines().__aiter__())
    out: list[dict[str, str]] = []
    current: dict[str, str] = {}

    async def read() -> None:
        async for line in lines:
            if not line:
                if current:
                    out.append(dict(current))
                    current.clear()
                    if len(out) >= limit:
                        return
                continue
            if line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            current[field] = current[field] + "\n" + value if field in current else value

    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(read(), timeout)
    return out
