"""eventcore worker throughput and latency, next to the bare Redis work it needs.

1. throughput: N no-op tasks submitted (batched), then ONE worker process
   (`eventcore worker`) started; time from its start until every task is
   terminal (all events written).
2. latency: an idle worker; 200 tasks one at a time; submit -> terminal event
   seen on the log (XREAD BLOCK), p50 / p99.
3. baseline, same server, same run: the same Redis work per task (submit
   script; batched claim; one script appending claimed, started, succeeded and
   acking) written as a bare loop with no framework: the ceiling to approach.

Usage: python bench/throughput.py [--tasks N] [--runs R] [--concurrency C]
                                  [--latency-tasks L] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import _quick
from redis.asyncio import Redis

from eventcore.connection import make_client
from eventcore.events import TaskClaimed, TaskSpec, TaskStarted, TaskSucceeded
from eventcore.keys import Keys
from eventcore.log import EventLog, Settlement, Submission, groups
from eventcore.server.process import ServerConfig, ServerProcess, find_server_binary, free_port

SPEC = TaskSpec(kind="noop", queue="cpu-light")
BATCH = 500


def start_worker(url: str, namespace: str, concurrency: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTCORE_")}
    env.update(REDIS_URL=url, EVENTCORE_NAMESPACE=namespace)
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "eventcore.cli",
            "worker",
            "--cpu",
            "--queues",
            "cpu-light",
            "--concurrency",
            str(concurrency),
            "--node",
            f"bench-{namespace}",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def ended(redis: Redis, keys: Keys) -> int:
    return sum([await redis.hlen(keys.done(p)) for p in keys.all_partitions()])


async def wait_started(redis: Redis, keys: Keys, node: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not await redis.hexists(keys.nodes_seen(), node):
        if time.monotonic() > deadline:
            raise RuntimeError("worker did not start")
        await asyncio.sleep(0.01)


async def throughput(redis: Redis, url: str, n: int, concurrency: int) -> tuple[float, float]:
    """Tasks/s from the worker's start, and from its first sign of life (ready)."""
    ns = "b" + uuid.uuid4().hex[:10]
    keys = Keys(ns)
    log = EventLog(redis, keys)
    for start in range(0, n, BATCH):
        await log.submit_many([Submission(spec=SPEC)] * min(BATCH, n - start))
    t0 = time.perf_counter()
    worker = start_worker(url, ns, concurrency)
    try:
        ready = None
        while await ended(redis, keys) < n:
            if worker.poll() is not None:
                raise RuntimeError(f"worker exited with {worker.returncode}")
            if ready is None and await redis.hexists(keys.nodes_seen(), f"bench-{ns}"):
                ready = time.perf_counter()
            await asyncio.sleep(0.002)
        end = time.perf_counter()
        return n / (end - t0), n / (end - (ready or t0))
    finally:
        worker.terminate()
        worker.wait(30)


async def latency(redis: Redis, url: str, n: int) -> list[float]:
    ns = "b" + uuid.uuid4().hex[:10]
    keys = Keys(ns)
    log = EventLog(redis, keys)
    worker = start_worker(url, ns, 4)
    stream = keys.events(0)
    try:
        await wait_started(redis, keys, f"bench-{ns}")
        await asyncio.sleep(0.3)  # let it reach its blocking read
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            res = await log.submit(SPEC)
            position = res.event_id
            while True:
                got = await redis.xread({stream: position}, block=5000)
                if not got:
                    raise RuntimeError("no terminal event within 5 s")
                entries = got[0][1]
                position = entries[-1][0]
                if any(
                    f[b"task"] == res.task_id.encode() and b"succeeded" in f[b"e"]
                    for _, f in entries
                ):
                    break
            out.append((time.perf_counter() - t0) * 1000)
        return out
    finally:
        worker.terminate()
        worker.wait(30)


async def bare_loop(redis: Redis, n: int) -> float:
    """The same Redis work with no framework: the ceiling."""
    ns = "b" + uuid.uuid4().hex[:10]
    keys = Keys(ns)
    log = EventLog(redis, keys)
    for start in range(0, n, BATCH):
        await log.submit_many([Submission(spec=SPEC)] * min(BATCH, n - start))
    streams = [keys.work(0, "cpu-light", p) for p in ("high", "normal", "low")]
    t0 = time.perf_counter()
    done = 0
    while done < n:
        got = await groups.claim_new(
            log.scripts, keys.cancels(0), streams, "workers", "bare", BATCH
        )
        items = []
        for e in got.entries:
            t = e.task_id
            items.append(
                Settlement(
                    e,
                    (
                        TaskClaimed(task_id=t, node="bare", attempt=1, deliveries=1, entry_id=e.id),
                        TaskStarted(task_id=t, node="bare", attempt=1),
                        TaskSucceeded(
                            task_id=t, node="bare", attempt=1, result=e.submitted.spec.params
                        ),
                    ),
                )
            )
        await log.settle("bare", items)
        done += len(items)
    return n / (time.perf_counter() - t0)


async def main(n: int, runs: int, concurrency: int, latency_n: int) -> None:
    binary = find_server_binary(prefer="path")
    with tempfile.TemporaryDirectory(prefix="ec-bench-") as tmp:
        server = ServerProcess(binary, ServerConfig(Path(tmp), port=free_port()))
        url = server.start()
        redis = make_client(url)
        try:
            worker_rates, ready_rates, bare_rates = [], [], []
            for _ in range(runs):
                from_start, from_ready = await throughput(redis, url, n, concurrency)
                worker_rates.append(from_start)
                ready_rates.append(from_ready)
                bare_rates.append(await bare_loop(redis, n))
                await redis.flushdb()
            lat = await latency(redis, url, latency_n)
        finally:
            await redis.aclose()
            server.stop()
    w, b = statistics.median(worker_rates), statistics.median(bare_rates)
    wr = statistics.median(ready_rates)
    q = statistics.quantiles(lat, n=100)
    print(
        f"server: {binary.flavor} {'.'.join(map(str, binary.version))}; {n} no-op tasks, "
        f"one worker process (concurrency {concurrency}); median of {runs} runs"
    )
    print(
        f"  eventcore worker      {w:>10,.0f} tasks/s   (runs: "
        f"{', '.join(f'{x:,.0f}' for x in worker_rates)})"
    )
    print(
        f"  ... counted from ready  {wr:>8,.0f} tasks/s   (runs: "
        f"{', '.join(f'{x:,.0f}' for x in ready_rates)})"
    )
    print(
        f"  bare loop (ceiling)   {b:>10,.0f} tasks/s   (runs: "
        f"{', '.join(f'{x:,.0f}' for x in bare_rates)})"
    )
    print(f"  ratio worker / bare = {w / b:.2f} (from ready: {wr / b:.2f})")
    print(
        f"  latency submit->terminal, idle worker, {latency_n} tasks one at a time: "
        f"p50 {statistics.median(lat):.2f} ms, p99 {q[98]:.2f} ms"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=1000)
    parser.add_argument("--latency-tasks", type=int, default=200)
    args = _quick.parse_args(parser, {"tasks": 300, "runs": 1, "latency_tasks": 20})
    asyncio.run(main(args.tasks, args.runs, args.concurrency, args.latency_tasks))
