"""HTTP submit throughput and latency of `eventcore web`, next to the log call it wraps.

1. HTTP: one `eventcore web` process (uvicorn, one event loop) against a fresh
   redis-server; C clients (httpx, one keep-alive connection each) POST
   {"kind": "noop"} to /v1/tasks back to back for S seconds. Requests/s,
   latency p50 / p99, and the CPU the web process and this (client) process
   used, so it shows which side was the limit.
2. baseline, same server, same run: as many submits as the HTTP phase
   completed, through EventLog.submit directly (no HTTP), C at a time.
3. in between, for the breakdown: EventLog.submit plus the reads the route
   makes before it (the backlog of every queue, one pipelined round trip,
   and the routing decision).

Each figure is the median of R runs. No worker runs: the tasks stay queued,
which costs the submit path nothing (stream lengths are O(1)).

Usage: python bench/http_submit.py [--seconds S] [--concurrency C] [--runs R] [--warmup W]
                                   [--quick]

(Not bench/http.py: a script's directory comes first on sys.path, so that
name would shadow the standard library's `http` for every script in bench/.)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import _quick
import httpx

from eventcore.config import DEFAULT_QUEUES
from eventcore.connection import make_client
from eventcore.events import TaskSpec
from eventcore.keys import Keys
from eventcore.log import EventLog
from eventcore.routing import backlog, route
from eventcore.server.process import ServerConfig, ServerProcess, find_server_binary, free_port

BODY = b'{"kind": "noop"}'
SPEC = TaskSpec(kind="noop", queue="cpu-light")
QUEUES = [q.name for q in DEFAULT_QUEUES]
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    done: int
    seconds: float
    latencies_ms: list[float]
    server_cpu: float = float("nan")  # share of one core used by the web process
    client_cpu: float = float("nan")  # share of one core used by this process

    @property
    def rate(self) -> float:
        return self.done / self.seconds

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies_ms)

    @property
    def p99(self) -> float:
        return statistics.quantiles(self.latencies_ms, n=100)[98]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


# -- the web process ---------------------------------------------------------------


async def start_web(
    url: str, namespace: str, log_path: Path
) -> tuple[asyncio.subprocess.Process, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTCORE_")}
    env.update(REDIS_URL=url, EVENTCORE_NAMESPACE=namespace)
    with open(log_path, "wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "eventcore.cli",
            "web",
            "--port",
            "0",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
        )
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
    except TimeoutError:
        line = b""
    if not line.startswith(b"web: listening on "):
        proc.kill()
        await proc.wait()
        raise RuntimeError(f"eventcore web did not start:\n{log_path.read_text()[-2000:]}")
    return proc, line.decode().rsplit(" ", 1)[1].strip()


async def stop_web(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()


# -- the phases --------------------------------------------------------------------


async def http_phase(base: str, pid: int, concurrency: int, seconds: float) -> Result:
    clients = [
        httpx.AsyncClient(base_url=base, timeout=30, limits=httpx.Limits(max_connections=1))
        for _ in range(concurrency)
    ]
    latencies: list[float] = []
    headers = {"content-type": "application/json"}
    try:
        # Open every connection before the clock starts.
        await asyncio.gather(*(c.get("/healthz") for c in clients))
        deadline = 0.0

        async def run(client: httpx.AsyncClient) -> None:
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                r = await client.post("/v1/tasks", content=BODY, headers=headers)
                latencies.append((time.perf_counter() - t0) * 1000)
                if r.status_code != 202:
                    raise RuntimeError(f"submit answered {r.status_code}: {r.text}")

        cpu0, own0 = cpu_seconds(pid), time.process_time()
        t0 = time.perf_counter()
        deadline = t0 + seconds
        await asyncio.gather(*(run(c) for c in clients))
        wall = time.perf_counter() - t0
        cpu1, own1 = cpu_seconds(pid), time.process_time()
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))
    return Result(len(latencies), wall, latencies, (cpu1 - cpu0) / wall, (own1 - own0) / wall)


async def direct_phase(n: int, concurrency: int, submit: Callable[[], Awaitable[object]]) -> Result:
    latencies: list[float] = []
    left = n

    async def run() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            t0 = time.perf_counter()
            await submit()
            latencies.append((time.perf_counter() - t0) * 1000)

    own0 = time.process_time()
    t0 = time.perf_counter()
    await asyncio.gather(*(run() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    return Result(n, wall, latencies, client_cpu=(time.process_time() - own0) / wall)


# -- main --------------------------------------------------------------------------


async def main(seconds: float, concurrency: int, runs: int, warmup: float) -> None:
    load_before = os.getloadavg()
    binary = find_server_binary(prefer="path")
    namespace = "b" + uuid.uuid4().hex[:10]
    with tempfile.TemporaryDirectory(prefix="ec-bench-") as tmp:
        server = ServerProcess(binary, ServerConfig(Path(tmp), port=free_port()))
        url = server.start()
        redis = make_client(url)
        log = EventLog(redis, Keys(namespace))
        web, base = await start_web(url, namespace, Path(tmp) / "web.log")
        assert web.pid is not None

        async def submit() -> object:
            return await log.submit(SPEC)

        async def routed_submit() -> object:
            queue = route(
                "noop", None, None, DEFAULT_QUEUES, await backlog(log, QUEUES), served=QUEUES
            )
            return await log.submit(TaskSpec(kind="noop", queue=queue))

        try:
            await http_phase(base, web.pid, concurrency, warmup)
            https, directs, routeds = [], [], []
            for _ in range(runs):
                h = await http_phase(base, web.pid, concurrency, seconds)
                https.append(h)
                directs.append(await direct_phase(h.done, concurrency, submit))
                routeds.append(await direct_phase(h.done, concurrency, routed_submit))
        finally:
            await stop_web(web)
            await redis.aclose()
            server.stop()

    def med(results: list[Result], what: str) -> float:
        return statistics.median(getattr(r, what) for r in results)

    def line(name: str, results: list[Result]) -> str:
        runs_text = ", ".join(f"{r.rate:,.0f}" for r in results)
        return (
            f"  {name:<34}{med(results, 'rate'):>9,.0f} /s   p50 {med(results, 'p50'):6.2f} ms"
            f"   p99 {med(results, 'p99'):6.2f} ms   (runs: {runs_text})"
        )

    load = ", ".join(f"{x:.1f}" for x in load_before)
    print(
        f"server: {binary.flavor} {'.'.join(map(str, binary.version))}; "
        f"{os.cpu_count()} cores shared by Redis, the web process and the clients; "
        f"{concurrency} concurrent clients, {seconds:g} s per run, median of {runs} runs"
    )
    print(f"  load average before the run: {load} (other work on the machine shows here)")
    print(line("HTTP POST /v1/tasks (eventcore web)", https))
    per_request = statistics.median(r.server_cpu / r.rate * 1000 for r in https)
    print(
        f"    web process: {med(https, 'server_cpu'):.0%} of a core, "
        f"{per_request:.2f} ms CPU per request; clients (httpx, this process): "
        f"{med(https, 'client_cpu'):.0%} of a core"
    )
    print(line("EventLog.submit + routing reads", routeds))
    print(line("EventLog.submit (baseline)", directs))
    h, d, r = med(https, "rate"), med(directs, "rate"), med(routeds, "rate")
    print(
        f"  ratio HTTP / EventLog.submit = {h / d:.2f} (HTTP / submit + routing reads: {h / r:.2f})"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each HTTP run")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of HTTP load first")
    args = _quick.parse_args(parser, {"seconds": 1.0, "concurrency": 8, "runs": 1, "warmup": 0.3})
    asyncio.run(main(args.seconds, args.concurrency, args.runs, args.warmup))
