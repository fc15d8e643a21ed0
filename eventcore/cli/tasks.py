"""Commands about tasks: ``submit`` a task, and with ``--wait`` follow it to
its end. They go through the same services as the web app: the submit
service (:func:`eventcore.submit.submit_task`: check, route, append) and
"wait until the task ends" (:func:`eventcore.waiting.wait_terminal`)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from eventcore.blobs import RedisBlobStore
from eventcore.config import Settings
from eventcore.connection import connect
from eventcore.errors import EventcoreError
from eventcore.events import Priority, TaskProgress, TaskSucceeded
from eventcore.keys import Keys
from eventcore.log import EventLog
from eventcore.server.target import client_options, redis_for
from eventcore.submit import NewTask, submit_task
from eventcore.waiting import wait_terminal

__all__ = ["add_commands"]


def add_commands(sub: Any) -> dict[str, Any]:
    s = sub.add_parser("submit", help="submit a task (and optionally wait for it)")
    s.add_argument("kind")
    s.add_argument(
        "--param",
        "-p",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a parameter; VALUE is JSON if it parses, else text (repeatable)",
    )
    s.add_argument(
        "--file",
        "-f",
        action="append",
        default=[],
        metavar="KEY=PATH",
        help="upload a file as a blob; the param KEY gets its reference (repeatable)",
    )
    s.add_argument(
        "--out",
        "-o",
        metavar="PATH",
        help="with --wait: write the result blob (e.g. the PNG) to PATH",
    )
    s.add_argument("--queue", help="queue (default: routed by kind and model)")
    s.add_argument("--model")
    s.add_argument("--priority", choices=[p.value for p in Priority], default="normal")
    s.add_argument("--idempotency-key")
    s.add_argument("--wait", action="store_true", help="print progress until the task ends")
    s.add_argument("--timeout", type=float, default=0, help="with --wait: give up after N s")
    return {"submit": cmd_submit}


def parse_params(pairs: list[str]) -> dict[str, Any]:
    """``--param KEY=VALUE`` pairs as the task's params: VALUE as JSON when it
    parses (numbers, booleans, lists), else as text."""
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise EventcoreError(f"--param {pair!r}: expected KEY=VALUE")
        try:
            params[key] = json.loads(text)
        except json.JSONDecodeError:
            params[key] = text
    return params


def cmd_submit(args: argparse.Namespace, settings: Settings) -> int:
    params = parse_params(args.param)
    with redis_for(settings) as target:
        return asyncio.run(_submit(target.url, settings, args, params))


async def _submit(
    url: str, settings: Settings, args: argparse.Namespace, params: dict[str, Any]
) -> int:
    uploads: dict[str, bytes] = {}
    for pair in args.file:
        key, sep, path = pair.partition("=")
        if not sep or not key:
            raise EventcoreError(f"--file {pair!r}: expected KEY=PATH")
        try:
            uploads[key] = Path(path).read_bytes()
        except OSError as exc:
            raise EventcoreError(f"--file {key}: cannot read {path}: {exc.strerror}") from None
    redis = await connect(url, client_options(settings))
    try:
        log = EventLog(
            redis,
            Keys(settings.namespace, settings.partitions),
            group=settings.group,
            idempotency_ttl=settings.idempotency_ttl,
        )
        new = NewTask(
            kind=args.kind,
            params=params,
            queue=args.queue,
            priority=Priority(args.priority),
            model=args.model,
            idempotency_key=args.idempotency_key,
        )
        res = (await submit_task(log, settings, new, uploads=uploads)).result
        print(
            res.task_id if res.created else f"{res.task_id} (existing, same idempotency key)",
            flush=True,
        )
        if not args.wait:
            return 0
        done = await wait_terminal(log, res.task_id, timeout=args.timeout or None, on_event=_show)
        if done is None:
            print(f"still running after {args.timeout}s", file=sys.stderr)
            return 3
        if not isinstance(done, TaskSucceeded):
            return 1
        if args.out and done.result_ref:
            blobs = RedisBlobStore(
                log.redis, log.keys, ttl=settings.blobs.ttl, max_bytes=settings.blobs.max_bytes
            )
            Path(args.out).write_bytes(await blobs.get(done.result_ref))
            print(f"result written to {args.out}", flush=True)
        return 0
    finally:
        await redis.aclose()


def _show(event: Any) -> None:
    """Print one of the task's events, as ``--wait`` follows it."""
    when = time.strftime("%H:%M:%S", time.localtime(event.at))
    match event:
        case TaskProgress(progress=p, message=m, warning=w):
            print(f"{when} progress {p:.0%} {m}{' WARNING ' + w if w else ''}", flush=True)
        case TaskSucceeded(result=result):
            print(f"{when} succeeded: {json.dumps(result)}", flush=True)
        case _:
            detail = getattr(event, "error", None) or getattr(event, "reason", "") or ""
            if hasattr(detail, "message"):
                detail = f"{detail.type}: {detail.message}"
            print(f"{when} {event.type_name().removeprefix('task.')} {detail}".rstrip(), flush=True)
