"""Redis memory per task in steady state, with and without retention.

A constant stream of no-op tasks runs through a real stack (a redis-server,
one ``eventcore worker``, ``eventcore project`` and ``eventcore sql`` into a
SQLite file, as child processes) for a while, once with the views' and the
log's retention turned off (every finished task stays in Redis: the
baseline) and once with short ones (``views.retention``, ``log.retention``
and ``log.snapshot_every`` of a few seconds, so the steady state is reached
within the run). Redis's ``used_memory`` is sampled every few seconds. With
retention it stops growing once the first tasks retire; without, it grows
by about the same bytes per task throughout. Printed: the samples, and the
growth per task over the second half of each run, side by side.

Imported by bench/sql.py (which prints this as one of its parts).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from eventcore.events import TaskSpec
from eventcore.keys import Keys
from eventcore.log import EventLog, Submission
from eventcore.server.process import ServerConfig, ServerProcess, find_server_binary, free_port

__all__ = ["steady_state"]

NAMESPACE = "steady"


def _role(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = log.open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "eventcore.cli", *argv],
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


async def _run(
    url: str, workdir: Path, *, retention: float | None, seconds: float, rate: int, every: float
) -> list[tuple[float, int, int]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTCORE_")}
    env.update(
        REDIS_URL=url,
        EVENTCORE_NAMESPACE=NAMESPACE,
        EVENTCORE_SQL__URL=f"sqlite:///{workdir / 'history.sqlite3'}",
        EVENTCORE_VIEWS__RETENTION=str(retention or 0),
        EVENTCORE_VIEWS__SWEEP_EVERY="0.5",
        EVENTCORE_LOG__RETENTION=str(retention or 0),
        EVENTCORE_LOG__SNAPSHOT_EVERY=str(retention or 0),
    )
    roles = [
        _role(["worker", "--node", "steady-1", "--concurrency", "64"], env, workdir / "w.log"),
        _role(["project"], env, workdir / "p.log"),
        _role(["sql"], env, workdir / "s.log"),
    ]
    redis = Redis.from_url(url)
    log = EventLog(redis, Keys(NAMESPACE, 1))
    samples: list[tuple[float, int, int]] = []
    submitted = 0
    try:
        start = time.monotonic()
        next_sample = start
        while (now := time.monotonic()) - start < seconds:
            due = int((now - start) * rate) - submitted
            if due > 0:
                subs = [
                    Submission(spec=TaskSpec(kind="noop", queue="cpu-light", params={"i": i}))
                    for i in range(due)
                ]
                await log.submit_many(subs)
                submitted += due
            if now >= next_sample:
                used = int((await redis.info("memory"))["used_memory"])
                samples.append((now - start, submitted, used))
                next_sample += every
            await asyncio.sleep(0.05)
    finally:
        for proc in roles:
            proc.terminate()
        for proc in roles:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        await redis.flushall()
        await redis.aclose()
    return samples


def _growth(samples: list[tuple[float, int, int]]) -> float:
    """Bytes of Redis memory per task submitted, over the second half."""
    half = samples[len(samples) // 2]
    last = samples[-1]
    tasks = last[1] - half[1]
    return (last[2] - half[2]) / tasks if tasks else 0.0


def steady_state(*, seconds: float, rate: int, retention: float) -> dict[str, Any]:
    """Run the stream without and with retention; print and return the figures."""
    every = max(1.0, seconds / 12)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        server = ServerProcess(find_server_binary(), ServerConfig(base / "redis", port=free_port()))
        (base / "redis").mkdir()
        url = server.start()
        try:
            results = {}
            for name, keep in (("no retention", None), (f"retention {retention:g}s", retention)):
                run_dir = base / name.replace(" ", "-")
                run_dir.mkdir()
                samples = asyncio.run(
                    _run(url, run_dir, retention=keep, seconds=seconds, rate=rate, every=every)
                )
                results[name] = samples
        finally:
            server.stop()
    print(f"\nRedis memory under a constant stream of {rate} no-op tasks/s for {seconds:g}s")
    print(f"{'':>8}" + "".join(f"{name:>34}" for name in results))
    head = f"{'tasks':>12}{'used MB':>10}{'B/task*':>12}"
    print(f"{'t (s)':>8}" + head * len(results))
    rows = min(len(s) for s in results.values())
    for i in range(rows):
        cells = []
        for samples in results.values():
            _, n, used = samples[i]
            prev_n, prev_used = (samples[i - 1][1], samples[i - 1][2]) if i else (0, used)
            per = (used - prev_used) / (n - prev_n) if n > prev_n else 0.0
            cells.append(f"{n:>12,}{used / 1e6:>10.1f}{per:>12,.0f}")
        print(f"{results[next(iter(results))][i][0]:>8.1f}" + "".join(cells))
    print("* growth of used_memory since the previous sample, per task submitted in between")
    growth = {name: _growth(samples) for name, samples in results.items()}
    names = list(growth)
    print("growth per task over the second half of each run (bytes of used_memory):")
    for name in names:
        print(f"  {name}: {growth[name]:,.0f} B/task")
    base_growth = growth[names[0]]
    if base_growth > 0:
        print(
            f"  ratio with / without retention: {growth[names[1]] / base_growth:.2f}x "
            "(target: flat, i.e. about 0 once tasks retire)"
        )
    return {"growth": growth, "samples": results}


if __name__ == "__main__":
    quick = "--quick" in sys.argv
    steady_state(
        seconds=8 if quick else 40, rate=100 if quick else 300, retention=2 if quick else 5
    )
