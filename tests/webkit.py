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
from projections.runner import Projector
from projections.store import ViewStore
from web.app import create_app


def settings_for(namespace: str, **web: Any) -> Settings:
    return Settings(namespace=namespace, web=WebSettings(**web))


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


async def announce(log: EventLog, node: str, handlers: tuple[str, ...]) -> None:
    caps = Capabilities(cpu_cores=2, memory_mb=1024, handlers=handlers)
    await append_node_event(log, NodeStarted(node=node, capabilities=caps, queues=("cpu-light",)))


def j(response: httpx.Response) -> Any:
    return msgspec.json.decode(response.content)
