"""``eventcore worker``: run a worker on this machine."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

from eventcore.config import Settings
from eventcore.connection import connect
from eventcore.errors import EventcoreError
from eventcore.events import GpuInfo
from eventcore.keys import Keys
from eventcore.log import EventLog
from eventcore.server.target import client_options, redis_for
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
    return {"worker": cmd_worker}


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
    log = EventLog(
        redis,
        Keys(settings.namespace, settings.partitions),
        group=settings.group,
        idempotency_ttl=settings.idempotency_ttl,
    )
    worker = Worker(log, settings, options, registry)
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
