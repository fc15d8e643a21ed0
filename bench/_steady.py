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
Sample = tuple[float, int, int, int]  # seconds, tasks submitted, bytes besides the feeds, feeds


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
) -> list[Sample]:
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
    samples: list[Sample] = []
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
                feeds = 0
                for shard in log.keys.view_shards():
                    feeds += int(await redis.memory_usage(log.keys.feed(shard)) or 0)
                samples.append((now - start, submitted, used - feeds, feeds))
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


def _growth(samples: list[Sample]) -> float:
    """Bytes of Redis memory besides the capped feeds per task submitted,
    over the second half of a run."""
    half = samples[len(samples) // 2]
    last = samples[-1]
    tasks = last[1] - half[1]
    return (last[2] - half[2]) / tasks if tasks else 0.0


def steady_state(*, seconds: float, rate: int, retention: float) -> dict[str, Any]:
    """Run the stream without and with retention; print and return the figures."""
    every = max(1.0, seconds / 12)
    results: dict[str, list[Sample]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        (base / "redis").mkdir()
        server = ServerProcess(find_server_binary(), ServerConfig(base / "redis", port=free_port()))
        url = server.start()
        try:
            for name, keep in (("no retention", None), (f"retention {retention:g}s", retention)):
                run_dir = base / name.replace(" ", "-")
                run_dir.mkdir()
                results[name] = asyncio.run(
                    _run(url, run_dir, retention=keep, seconds=seconds, rate=rate, every=every)
                )
        finally:
            server.stop()
    print(f"\nRedis memory under a constant stream of {rate} no-op tasks/s for {seconds:g}s")
    print(f"{'':>8}" + "".join(f"{name:>44}" for name in results))
    head = f"{'tasks':>10}{'rest MB':>9}{'feeds MB':>10}{'rest B/task*':>15}"
    print(f"{'t (s)':>8}" + head * len(results))
    rows = min(len(s) for s in results.values())
    for i in range(rows):
        cells = []
        for samples in results.values():
            _, n, rest, feeds = samples[i]
            prev_n, prev_rest = (samples[i - 1][1], samples[i - 1][2]) if i else (0, rest)
            per = (rest - prev_rest) / (n - prev_n) if n > prev_n else 0.0
            cells.append(f"{n:>10,}{rest / 1e6:>9.1f}{feeds / 1e6:>10.1f}{per:>15,.0f}")
        print(f"{results[next(iter(results))][i][0]:>8.1f}" + "".join(cells))
    print(
        "rest: used_memory less the view feeds (capped streams of every view change,\n"
        "for SSE resume: they grow to their cap, then stay); * growth since the previous\n"
        "sample, per task submitted in between"
    )
    growth = {name: _growth(samples) for name, samples in results.items()}
    names = list(growth)
    print("growth of the rest per task over the second half of each run:")
    for name in names:
        print(f"  {name}: {growth[name]:,.0f} B/task")
    if growth[names[0]] > 0:
        print(
            f"  ratio with / without retention: {growth[names[1]] / growth[names[0]]:.2f}x "
            "(target: flat, about 0 once tasks retire)"
        )
    return {"growth": growth, "samples": results}


if __name__ == "__main__":
    quick = "--quick" in sys.argv
    steady_state(
        seconds=8 if quick else 40, rate=100 if quick else 300, retention=2 if quick else 5
    )
