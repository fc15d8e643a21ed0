"""``eventcore worker`` and ``eventcore submit``."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

from eventcore.blobs import RedisBlobStore
from eventcore.config import Settings
from eventcore.connection import connect
from eventcore.errors import EventcoreError
from eventcore.events import GpuInfo, Priority, TaskProgress, TaskSucceeded
from eventcore.keys import Keys
from eventcore.log import EventLog
from eventcore.server.target import client_options, redis_for
from eventcore.submit import NewTask, submit_task
from eventcore.waiting import wait_terminal
from workers.capabilities import detect, eligible_queues, unmet
from workers.handlers import Registry
from workers.resources import ResourceConfig
from workers.worker import Worker, WorkerOptions, default_node_id

__all__ = ["add_commands"]


def add_commands(sub: Any) -> dict[str, Any]:
    w = sub.add_parser("worker", help="run a worker: claim and run tasks from its queues")
    w.add_argument("--queues", help="comma-separated queue names (default: all it can serve)")
    w.add_argument("--concurrency", type=int, help="tasks at once (default: config, else cores)")
    g = w.add_mutually_exclusive_group()
    g.add_argument("--gpu", dest="gpu", action="store_const", const="on", help="require CUDA")
    g.add_argument("--cpu", dest="gpu", action="store_const", const="off", help="ignore GPUs")
    w.add_argument(
        "--declare-gpu",
        metavar="MEMORY_MB",
        type=int,
        action="append",
        help="declare a GPU with this much memory (machines without CUDA, tests)",
    )
    w.add_argument(
        "--handlers",
        action="append",
        default=[],
        metavar="MODULE:ATTR",
        help="extra handlers to load (repeatable)",
    )
    w.add_argument("--node", help="node id (default: host-pid)")
    w.add_argument(
        "--prefetch",
        type=int,
        default=1,
        metavar="N",
        help="entries held beyond --concurrency for handlers in child processes, "
        "so a child never waits for the next claim (default 1; 0 turns it off)",
    )

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
    return {"worker": cmd_worker, "submit": cmd_submit}


# -- worker --------------------------------------------------------------------------


def installed_models(settings: Settings) -> list[str]:
    """Configured models whose files are present under the model root."""
    root = Path(settings.models.root)
    return [name for name, rel in settings.models.files.items() if (root / rel).is_file()]


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    ws = settings.worker
    registry = Registry([*ws.handlers, *args.handlers])
    declared = None
    if args.declare_gpu:
        declared = [
            GpuInfo(index=i, name="declared", memory_mb=m) for i, m in enumerate(args.declare_gpu)
        ]
    caps = detect(
        gpu=args.gpu or ws.gpu,
        handlers=registry.names(),
        models=[*registry.models(), *installed_models(settings)],
        declared_gpus=declared,
    )
    wanted = args.queues.split(",") if args.queues else list(ws.queues)
    declared_names = {q.name for q in settings.queues}
    if missing := [q for q in wanted if q not in declared_names]:
        raise EventcoreError(
            f"unknown queue(s) {', '.join(missing)}; declared: {', '.join(sorted(declared_names))}"
        )
    candidates = [q for q in settings.queues if not wanted or q.name in wanted]
    queues = eligible_queues(caps, candidates)
    if not queues:
        why = "; ".join(f"{q.name}: {', '.join(unmet(caps, q))}" for q in candidates)
        raise EventcoreError(f"this node can serve none of the queues ({why})")
    concurrency = args.concurrency or ws.concurrency or caps.cpu_cores
    with redis_for(settings) as target:
        options = WorkerOptions(
            node=args.node or default_node_id(),
            queues=tuple(queues),
            concurrency=concurrency,
            capabilities=caps,
            handler_specs=tuple([*ws.handlers, *args.handlers]),
            resources=ResourceConfig.from_settings(settings, target.url),
            prefetch=max(0, args.prefetch),
        )
        asyncio.run(_run_worker(target.url, settings, options, registry))
    return 0


async def _run_worker(
    url: str, settings: Settings, options: WorkerOptions, registry: Registry
) -> None:
    redis = await connect(url, client_options(settings))
    elog = EventLog(
        redis,
        Keys(settings.namespace, settings.partitions),
        group=settings.group,
        idempotency_ttl=settings.idempotency_ttl,
    )
    worker = Worker(elog, settings, options, registry)
    loop = asyncio.get_running_loop()
    interrupts = 0

    def on_interrupt() -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts == 1:
            print("draining (Ctrl-C again to stop at once)", file=sys.stderr, flush=True)
            worker.drain()
        else:
            worker.stop_now()

    loop.add_signal_handler(signal.SIGINT, on_interrupt)
    loop.add_signal_handler(signal.SIGTERM, worker.drain)
    print(
        f"worker {options.node}: queues {', '.join(q.name for q in options.queues)}, "
        f"concurrency {options.concurrency}, handlers {', '.join(registry.names())}",
        file=sys.stderr,
        flush=True,
    )
    try:
        await worker.run()
    finally:
        await redis.aclose()


# -- submit --------------------------------------------------------------------------


def parse_params(pairs: list[str]) -> dict[str, Any]:
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
        elog = EventLog(
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
        res = (await submit_task(elog, settings, new, uploads=uploads)).result
        print(
            res.task_id if res.created else f"{res.task_id} (existing, same idempotency key)",
            flush=True,
        )
        if not args.wait:
            return 0
        done = await wait_terminal(elog, res.task_id, timeout=args.timeout or None, on_event=_show)
        if done is None:
            print(f"still running after {args.timeout}s", file=sys.stderr)
            return 3
        if not isinstance(done, TaskSucceeded):
            return 1
        if args.out and done.result_ref:
            blobs = RedisBlobStore(
                elog.redis, elog.keys, ttl=settings.blobs.ttl, max_bytes=settings.blobs.max_bytes
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
