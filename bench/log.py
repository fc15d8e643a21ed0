"""Submit throughput through the submit script, next to raw XADD on the same server.

Runs its own redis-server (AOF off: this measures eventcore's overhead, not the
disk) and prints, for each mode, the median of several runs:

  raw XADD, one at a time        vs  submit, one at a time
  raw XADD, pipelined (B/trip)   vs  submit_many, B per trip

Usage: python bench/log.py [--tasks N] [--single-tasks S] [--batch B] [--runs R] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import _quick

from eventcore.codec import encode
from eventcore.connection import make_client
from eventcore.events import TaskSpec, TaskSubmitted
from eventcore.ids import new_task_id
from eventcore.keys import Keys
from eventcore.log import EventLog, Submission
from eventcore.server.process import (
    ServerBinary,
    ServerConfig,
    ServerProcess,
    find_server_binary,
    free_port,
)

SPEC = TaskSpec(kind="noop", queue="cpu-light", params={"n": 1})


async def rate(run: Callable[[], Awaitable[int]]) -> float:
    t0 = time.perf_counter()
    n = await run()
    return n / (time.perf_counter() - t0)


async def main(tasks: int, single_n: int, batch: int, runs: int) -> None:
    binary = find_server_binary(prefer="path")
    with tempfile.TemporaryDirectory(prefix="ec-bench-") as tmp:
        server = ServerProcess(binary, ServerConfig(Path(tmp), port=free_port()))
        server.start()
        try:
            await measure(binary, server.url, tasks, single_n, batch, runs)
        finally:
            server.stop()


async def measure(
    binary: ServerBinary, url: str, tasks: int, single_n: int, batch: int, runs: int
) -> None:
    redis = make_client(url)
    try:
        payload = encode(TaskSubmitted(task_id=new_task_id(), spec=SPEC))

        async def xadd_single() -> int:
            stream = f"bench:{uuid.uuid4().hex}"
            for _ in range(single_n):
                await redis.xadd(stream, {"task": "t", "e": payload})
            await redis.delete(stream)
            return single_n

        async def xadd_pipelined() -> int:
            stream = f"bench:{uuid.uuid4().hex}"
            for start in range(0, tasks, batch):
                async with redis.pipeline(transaction=False) as pipe:
                    for _ in range(min(batch, tasks - start)):
                        pipe.xadd(stream, {"task": "t", "e": payload})
                    await pipe.execute()
            await redis.delete(stream)
            return tasks

        def fresh_log() -> EventLog:
            return EventLog(redis, Keys("b" + uuid.uuid4().hex[:10]))

        async def submit_single() -> int:
            log = fresh_log()
            for _ in range(single_n):
                await log.submit(SPEC)
            return single_n

        async def submit_batched() -> int:
            log = fresh_log()
            for start in range(0, tasks, batch):
                await log.submit_many([Submission(spec=SPEC)] * min(batch, tasks - start))
            return tasks

        modes = {
            "raw XADD, one at a time": xadd_single,
            "submit, one at a time": submit_single,
            f"raw XADD, pipelined {batch}/trip": xadd_pipelined,
            f"submit_many, {batch}/trip": submit_batched,
        }
        results: dict[str, list[float]] = {name: [] for name in modes}
        await submit_single()  # warm up: load scripts, JIT the connection pool
        for _ in range(runs):
            for name, run in modes.items():  # interleaved, so noise hits all modes alike
                results[name].append(await rate(run))
            await redis.flushdb()
        med = {name: statistics.median(values) for name, values in results.items()}
        print(
            f"server: {binary.flavor} {'.'.join(map(str, binary.version))}; "
            f"{tasks} tasks per batched run, {single_n} per single run; median of {runs} runs"
        )
        for name, value in med.items():
            spread = f"{min(results[name]):,.0f}..{max(results[name]):,.0f}"
            print(f"  {name:<32} {value:>10,.0f} /s   (runs: {spread})")
        names = list(modes)
        print(f"  ratio single:  submit / raw XADD = {med[names[1]] / med[names[0]]:.2f}")
        print(
            f"  ratio batched: submit_many / pipelined XADD = {med[names[3]] / med[names[2]]:.2f}"
            "   (target >= 0.50)"
        )
    finally:
        await redis.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument(
        "--single-tasks", type=int, help="per one-at-a-time run (default: max(1000, tasks/4))"
    )
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--runs", type=int, default=5)
    args = _quick.parse_args(parser, {"tasks": 500, "single_tasks": 200, "runs": 1})
    single_n = args.single_tasks or max(1000, args.tasks // 4)
    asyncio.run(main(args.tasks, single_n, args.batch, args.runs))
