"""Measure one peer on one workload and print the result as one JSON line.

Run by bench/peers.py, once per measurement, with the Python that has the peer
installed (so arq can live in a venv of its own):

  python bench/peers/harness.py PEER {throughput,latency} --url URL [--tasks N] ...

throughput: N counter tasks enqueued, then the peer's worker started; the clock
runs from just before the worker is spawned until the counter reaches N.
latency: the worker started and warmed up; then tasks one at a time, each timed
from submit until BLPOP returns the key it pushed.

The result is {"ok": {...}} or {"error": "..."}; a peer that cannot be imported
says so with "kind": "import", so the caller skips it for the rest of the run.
Every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import Any, cast

import kit
from redis.asyncio import Redis

HERE = Path(__file__).resolve().parent
WARMUP = 5
STARTUP_TIMEOUT = 60.0  # the first warm-up task also waits for the worker to boot
TASK_TIMEOUT = 10.0
STOP_TIMEOUT = 15.0  # graceful stop, then SIGKILL; a peer module may set its own
POLL = 0.005


class BenchError(Exception):
    """A measurement that could not finish; the message goes into the notes column."""


class WorkerProcess:
    """The peer's worker, in a session of its own, stopped (SIGTERM, then SIGKILL) on exit."""

    def __init__(self, argv: list[str], log_path: Path, stop_timeout: float) -> None:
        self.argv = argv
        self.log_path = log_path
        self.stop_timeout = stop_timeout
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> WorkerProcess:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
        with open(self.log_path, "ab") as log:
            # Own session: a Ctrl-C at the terminal reaches the harness, which
            # stops the worker gracefully; the group lets stragglers be killed.
            self.proc = subprocess.Popen(
                self.argv,
                cwd=HERE,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def check(self) -> None:
        """Raise BenchError if the worker has exited."""
        assert self.proc is not None
        code = self.proc.poll()
        if code is not None:
            raise BenchError(f"worker exited with code {code}: {self.log_tail()}")

    def log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return lines[-1][:300] if lines else "(empty log)"

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # every peer shuts down warm on SIGTERM
            try:
                proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                pass
        try:  # pool children (prefork, worker processes) that outlived their parent
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()


def versions(dists: tuple[str, ...]) -> str:
    out = []
    for name in (*dists, "redis"):
        try:
            out.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            out.append(f"{name} ?")
    return ", ".join(out)


async def throughput(app: Any, redis: Redis, n: int, timeout: float, log: Path) -> dict[str, Any]:
    async with app.client() as client:
        t = time.perf_counter()
        await client.enqueue_many(n)
        enqueue_s = time.perf_counter() - t
    if int(await redis.get(kit.counter_key()) or 0):
        raise BenchError("the counter moved before the worker started")
    t0 = time.perf_counter()
    with WorkerProcess(
        app.worker_argv(), log, getattr(app, "STOP_TIMEOUT", STOP_TIMEOUT)
    ) as worker:
        first = None
        done = 0
        while done < n:
            await asyncio.sleep(POLL)
            done = int(await redis.get(kit.counter_key()) or 0)
            now = time.perf_counter()
            if first is None and done:
                first = now
            worker.check()
            if now - t0 > timeout:
                raise BenchError(f"timed out: {done}/{n} done after {timeout:g} s")
        end = time.perf_counter()
    return {
        "rate": n / (end - t0),
        "first_s": (first or end) - t0,
        "enqueue_rate": n / enqueue_s,
        "extra_runs": done - n,  # > 0 would mean tasks ran twice
    }


async def roundtrip(
    client: Any, redis: Redis, token: str, timeout: float, worker: WorkerProcess
) -> float:
    t0 = time.perf_counter()
    await client.submit(token)
    got = await redis.blpop([kit.done_key(token)], timeout=timeout)
    ms = (time.perf_counter() - t0) * 1000
    if got is None:
        worker.check()
        raise BenchError(f"task {token} not done within {timeout:g} s")
    return ms


async def latency(app: Any, redis: Redis, n: int, gap: float, log: Path) -> dict[str, Any]:
    with WorkerProcess(
        app.worker_argv(), log, getattr(app, "STOP_TIMEOUT", STOP_TIMEOUT)
    ) as worker:
        async with app.client() as client:
            t0 = time.perf_counter()
            await roundtrip(client, redis, "warm0", STARTUP_TIMEOUT, worker)
            first_s = time.perf_counter() - t0
            for i in range(1, WARMUP):
                await roundtrip(client, redis, f"warm{i}", TASK_TIMEOUT, worker)
            samples = []
            for i in range(n):
                await asyncio.sleep(gap)
                samples.append(await roundtrip(client, redis, str(i), TASK_TIMEOUT, worker))
    return {"samples_ms": samples, "first_s": first_s}


async def measure(args: argparse.Namespace, app: Any) -> dict[str, Any]:
    # Long socket timeout: BLPOP itself waits up to TASK_TIMEOUT / STARTUP_TIMEOUT.
    redis = Redis.from_url(args.url, socket_timeout=STARTUP_TIMEOUT + 10)
    try:
        if args.mode == "throughput":
            return await throughput(app, redis, args.tasks, args.timeout, args.log)
        return await latency(app, redis, args.latency_tasks, args.gap, args.log)
    finally:
        await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("peer")
    parser.add_argument("mode", choices=["throughput", "latency"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--latency-tasks", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=300.0)
    # Between latency tasks: long enough for the worker to finish its own
    # bookkeeping (results, acks) and wait again, so each task meets an idle worker.
    parser.add_argument("--gap", type=float, default=0.02)
    parser.add_argument("--log", type=Path, required=True)
    args = parser.parse_args()

    # bench/peers.py sends SIGTERM when its own bound runs out: unwind, so the
    # worker is stopped by WorkerProcess.__exit__ rather than orphaned.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.environ[kit.URL_ENV] = args.url
    result: dict[str, Any]
    try:
        app = cast(kit.PeerModule, importlib.import_module(f"{args.peer}_app"))
    except Exception as exc:  # any import failure means "skip this peer"
        result = {"error": f"cannot import: {type(exc).__name__}: {exc}", "kind": "import"}
    else:
        try:
            ok = asyncio.run(measure(args, app))
            ok |= {"version": versions(app.DISTS), "worker": app.WORKER}
            result = {"ok": ok}
        except BenchError as exc:
            result = {"error": str(exc)}
        except Exception as exc:  # the peer's own failure: report it, the others go on
            result = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
