"""The SQL history: backfill into PostgreSQL and SQLite next to the Redis view
rebuild of the same log, and the SQL projector's lag behind a live worker.

Runs its own redis-server (AOF off), its own PostgreSQL (a new cluster in a
temporary directory, default settings, fsync ON: every commit waits for its
WAL to reach the disk) and SQLite files in a temporary directory (WAL,
synchronous=NORMAL, as :mod:`history.database` opens them).

1. A log of N events, written once by bench/replay.py's generator without
   progress reports: tasks submitted, claimed, started and ended (mostly
   succeeded; some failed, retried, cancelled or dead-lettered), about 4
   events a task, 1,000 in flight over 8 nodes, with the nodes' heartbeats.
2. Backfill, the median of R runs, each store in turn run by run:

     Redis rebuild  ``eventcore replay rebuild`` (``projections.tools.rebuild``):
                    fresh views folded from the start of the log, beside views in
                    use that are caught up; timed until the fresh views have
                    caught up (the switch and the drop of the old views after
                    are left out)
     PostgreSQL     a new database, migrated, then ``SqlProjector.step()`` until
                    nothing is left: what ``eventcore sql`` does on a new
                    database; at ``sql.batch`` (5,000 entries a transaction),
                    and again at the rebuild's batch (``--big-batch``)
     SQLite         the same into a new file, at ``sql.batch``

   events/s, the ratios to the Redis rebuild, and the CPU per event of this
   process and of the server (Redis, PostgreSQL; SQLite runs in this
   process). The garbage collector is tuned as both commands tune it. The
   tables of the last run are checked against the fold of the log
   (``eventcore sql verify``): a fast backfill of wrong rows is none.
3. Live lag: one worker process (``eventcore worker``, concurrency 1000) runs
   T no-op tasks submitted at a steady rate over S seconds, while
   ``SqlProjector.run`` follows the log into a new PostgreSQL database (the
   default batch). For every entry, the time its transaction committed less
   the time in its entry id: p50, p99 and max.

4. Steady state (bench/_steady.py): a constant stream of no-op tasks through
   a real stack (a worker, ``eventcore project`` and ``eventcore sql``), once
   with the views' and the log's retention off, once with a few seconds of
   each: Redis's ``used_memory`` sampled as it runs, and its growth per task
   over the second half of each run. With retention it stays flat.

Figures, never assertions; the targets are printed next to them. The machine
may be shared: the ratios, measured in the same run, say more than the figures.

Usage: python bench/sql.py [--events N] [--runs R] [--batch B] [--big-batch B]
                           [--rebuild-batch B] [--live-tasks T] [--live-seconds S]
                           [--steady-seconds S] [--steady-rate R] [--steady-retention S]
                           [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import _quick
from _steady import steady_state
from redis.asyncio import Redis
from replay import SUBMIT_BATCH, Gen, caught_up_views
from scale import process_cpu
from throughput import ended, start_worker, wait_started

from eventcore import events as ev
from eventcore.config import Settings
from eventcore.connection import make_client
from eventcore.ids import stream_id_key
from eventcore.keys import Keys
from eventcore.log import EventLog, Submission
from eventcore.server.postgres import PostgresConfig, PostgresProcess
from eventcore.server.process import ServerConfig, ServerProcess, find_server_binary, free_port
from history.database import Database, open_database
from history.fold import Item
from history.follower import SqlProjector
from history.verify import verify_history
from projections.runner import tune_gc
from projections.tools import rebuild

PG_TARGET = 30_000  # events/s
RATIO_TARGET = 0.5  # PostgreSQL backfill / Redis rebuild
IN_FLIGHT = 1000


@dataclass
class Backfill:
    """One backfill run."""

    events: int
    seconds: float
    own_us: float  # this process's CPU per event, microseconds
    server_us: float | None  # the server's CPU per event (None: no server)

    @property
    def rate(self) -> float:
        return self.events / self.seconds


class Meter:
    """Wall time and CPU (this process's, a server's) since it was made."""

    def __init__(self, server_pid: int | None) -> None:
        self.pid = server_pid
        self.t0, self.own0 = time.perf_counter(), time.process_time()
        self.server0 = process_cpu(server_pid) if server_pid is not None else 0.0

    def read(self, events: int) -> Backfill:
        seconds = time.perf_counter() - self.t0
        own = time.process_time() - self.own0
        server = None
        if self.pid is not None:
            server = (process_cpu(self.pid) - self.server0) / max(events, 1) * 1e6
        return Backfill(events, seconds, own / max(events, 1) * 1e6, server)


async def redis_rebuild(log: EventLog, batch: int, redis_pid: int) -> Backfill:
    """``eventcore replay rebuild``, timed until its views have caught up."""
    meter = Meter(redis_pid)
    caught_up: list[Backfill] = []

    def progress(done: int, _seconds: float) -> None:
        caught_up[:] = [meter.read(done)]

    result = await rebuild(log, batch=batch, progress=progress)
    assert caught_up and caught_up[0].events == result.entries, (caught_up, result)
    return caught_up[0]


async def sql_backfill(log: EventLog, db: Database, batch: int, server_pid: int | None) -> Backfill:
    """A new database filled from the whole log, as ``eventcore sql`` does."""
    projector = SqlProjector(log, db, batch=batch)
    await projector.setup()  # the migrations are not timed
    gc.collect()
    meter = Meter(server_pid)
    while await projector.step(None):
        pass
    return meter.read(projector.applied)


async def verified(log: EventLog, db: Database) -> tuple[str, int]:
    """What ``eventcore sql verify`` says of the tables, in a few words, and
    the number of task rows."""
    projector = SqlProjector(log, db)
    problems = await verify_history(projector)
    tasks = (await asyncio.to_thread(projector.store.counts))["tasks"]
    if not problems:
        return "equal to the fold of the log (eventcore sql verify)", tasks
    return f"{len(problems)} differences, first: {problems[0]}", tasks


class TimedProjector(SqlProjector):
    """The SQL projector with a clock on its commits: for every entry, the
    milliseconds from the time in its id until its transaction committed."""

    def __init__(self, log: EventLog, db: Database) -> None:
        super().__init__(log, db)
        self.lags_ms: list[float] = []
        self.commits = 0

    async def apply(self, items: list[Item]) -> None:
        await super().apply(items)  # returns once the transaction has committed
        now_ms = time.time() * 1000
        self.commits += 1
        self.lags_ms += [now_ms - stream_id_key(entry_id)[0] for _, entry_id, _ in items]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def live_lag(redis: Redis, url: str, db: Database, tasks: int, seconds: float) -> list[str]:
    ns = "b" + uuid.uuid4().hex[:10]
    log = EventLog(redis, Keys(ns))
    projector = TimedProjector(log, db)
    await projector.setup()
    stop = asyncio.Event()
    runner = asyncio.create_task(projector.run(stop))
    worker = start_worker(url, ns, IN_FLIGHT)
    try:
        await wait_started(redis, log.keys, f"bench-{ns}")
        spec = ev.TaskSpec(kind="noop", queue="cpu-light")
        t0 = time.perf_counter()
        for b, start in enumerate(range(0, tasks, SUBMIT_BATCH)):
            await asyncio.sleep(
                max(0, t0 + b * seconds * SUBMIT_BATCH / tasks - time.perf_counter())
            )
            await log.submit_many([Submission(spec=spec)] * min(SUBMIT_BATCH, tasks - start))
        submit_s = time.perf_counter() - t0
        deadline = time.monotonic() + 120
        while await ended(redis, log.keys) < tasks:
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the worker died, or the tasks did not end within 120 s")
            if runner.done():
                runner.result()  # the projector died: raise its error
            await asyncio.sleep(0.005)
        all_ended = time.perf_counter()
        tips = {}
        for stream in projector.streams:
            newest = await redis.xrevrange(stream, count=1)
            if newest:
                tips[stream] = stream_id_key(newest[0][0].decode())
        while any(stream_id_key(projector.positions[s]) < tip for s, tip in tips.items()):
            if runner.done():
                runner.result()
            if time.monotonic() > deadline:
                raise RuntimeError("the SQL projector did not catch up within 120 s")
            await asyncio.sleep(0.002)
        catch_up = time.perf_counter() - all_ended
        took = time.perf_counter() - t0
    finally:
        stop.set()
        worker.terminate()
        worker.wait(30)
    await asyncio.wait_for(runner, 30)
    lags = projector.lags_ms
    return [
        f"live: {tasks:,} no-op tasks submitted over {submit_s:.1f} s to one worker (concurrency "
        f"{IN_FLIGHT}), `SqlProjector.run` into PostgreSQL (batch {projector.batch:,}); "
        f"{len(lags):,} entries in {projector.commits:,} transactions "
        f"({len(lags) / max(projector.commits, 1):,.0f} a transaction) over {took:.1f} s",
        f"  lag, entry id time -> its transaction committed: p50 {statistics.median(lags):,.0f}"
        f" / p99 {percentile(lags, 0.99):,.0f} / max {max(lags):,.0f} ms; the rows were all "
        f"written {catch_up * 1000:,.0f} ms after the last task ended",
    ]


@dataclass(frozen=True)
class Target:
    """Where a backfill goes: ``kind`` is ``redis``, ``postgresql`` or ``sqlite``."""

    name: str
    kind: str
    batch: int


def runs_of(values: list[float]) -> str:
    return ", ".join(f"{v:,.0f}" for v in values)


def median_of(runs: list[Backfill], pick: Callable[[Backfill], float | None]) -> float | None:
    values = [v for r in runs if (v := pick(r)) is not None]
    return statistics.median(values) if values else None


def backfill_lines(results: dict[Target, list[Backfill]]) -> list[str]:
    rates = {t: statistics.median(r.rate for r in runs) for t, runs in results.items()}
    redis_rate = next(rate for t, rate in rates.items() if t.kind == "redis")
    lines = [
        f"  {'':<15}{'batch':>7}{'events/s':>10}{'/ Redis':>9}{'CPU us/event: here':>21}"
        f"{'server':>8}   runs (events/s)"
    ]
    for target, runs in results.items():
        rate = rates[target]
        own, server = median_of(runs, lambda r: r.own_us), median_of(runs, lambda r: r.server_us)
        lines.append(
            f"  {target.name:<15}{target.batch:>7,}{rate:>10,.0f}{rate / redis_rate:>8.2f}x"
            f"{own or 0:>21.1f}{'-' if server is None else f'{server:.1f}':>8}   "
            f"{runs_of([r.rate for r in runs])}"
        )
    pg = [
        f"batch {t.batch:,}: {rate:,.0f} events/s, {rate / redis_rate:.2f}x"
        for t, rate in rates.items()
        if t.kind == "postgresql"
    ]
    lines.append(
        f"  target: PostgreSQL >= {PG_TARGET:,} events/s and >= {RATIO_TARGET}x the Redis "
        f"rebuild; is, at {'; at '.join(pg)}"
    )
    return lines


async def backfill(
    log: EventLog, target: Target, tmp: Path, pg: PostgresProcess, redis_pid: int, check: bool
) -> tuple[Backfill, tuple[str, int] | None]:
    """One backfill run into a new store, and what ``verify`` says of it if ``check``."""
    if target.kind == "redis":
        return await redis_rebuild(log, target.batch, redis_pid), None
    name = f"backfill{uuid.uuid4().hex[:8]}"
    if target.kind == "postgresql":
        url, server_pid = pg.create_database(name), pg.pid
    else:
        url, server_pid = f"sqlite:///{tmp / name}.sqlite3", None
    db = open_database(url, writer=True)
    try:
        result = await sql_backfill(log, db, target.batch, server_pid)
        said = await verified(log, db) if check else None
    finally:
        db.dispose()
        if target.kind == "postgresql":
            pg.drop_database(name)
        else:
            for leftover in tmp.glob(f"{name}.*"):
                leftover.unlink()
    return result, said


async def main(args: argparse.Namespace) -> None:
    targets = [
        Target("Redis rebuild", "redis", args.rebuild_batch),
        Target("PostgreSQL", "postgresql", args.batch),
    ]
    if args.big_batch and args.big_batch != args.batch:
        targets.append(Target("PostgreSQL", "postgresql", args.big_batch))
    targets.append(Target("SQLite", "sqlite", args.batch))
    binary = find_server_binary(prefer="path")
    with tempfile.TemporaryDirectory(prefix="ec-bench-") as tmp_name:
        tmp = Path(tmp_name)
        server = ServerProcess(binary, ServerConfig(tmp / "redis", port=free_port()))
        url = server.start()
        redis = make_client(url)
        pg = PostgresProcess(PostgresConfig(tmp / "postgres", fsync=True))
        try:
            pg.start()
            assert server.pid is not None
            log = EventLog(redis, Keys("b" + uuid.uuid4().hex[:10]))
            t0 = time.perf_counter()
            n = await Gen(log, args.events, IN_FLIGHT, progress=0).run()
            gen_s = time.perf_counter() - t0
            node_events = await redis.xlen(log.keys.nodes())
            print(f"generated {n:,} events in {gen_s:.1f} s ({n / gen_s:,.0f}/s)", flush=True)
            # The rebuild runs beside views in use that are caught up, as in a live system.
            in_use = await caught_up_views(log)
            await redis.set(log.keys.view_pointer(), in_use.ns)
            tune_gc()  # as `eventcore replay rebuild` and `eventcore sql` do
            results: dict[Target, list[Backfill]] = {t: [] for t in targets}
            checks: dict[Target, tuple[str, int]] = {}
            for run in range(args.runs):
                for target in targets:
                    gc.collect()
                    check = run == args.runs - 1
                    result, said = await backfill(log, target, tmp, pg, server.pid, check)
                    results[target].append(result)
                    if said is not None:
                        checks[target] = said
                print(f"  run {run + 1} of {args.runs} done", flush=True)
            db = open_database(pg.create_database("live"), writer=True)
            try:
                live = await live_lag(redis, url, db, args.live_tasks, args.live_seconds)
            finally:
                db.dispose()
        finally:
            await redis.aclose()
            pg.close()
            server.stop()
    tasks = next(iter(checks.values()))[1]
    print(
        f"Redis {binary.flavor} {'.'.join(map(str, binary.version))} (AOF off), PostgreSQL "
        f"{pg.binaries.version} (fsync on, default settings), SQLite (WAL, synchronous=NORMAL); "
        f"{n:,} events ({tasks:,} tasks, {node_events:,} node events); median of {args.runs} runs"
    )
    print("backfill of the whole log into an empty store (CPU: this process, the server):")
    for line in backfill_lines(results):
        print(line)
    for target, (said, _) in checks.items():
        print(f"  {target.name} tables (batch {target.batch:,}), last run: {said}")
    for line in live:
        print(line)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--batch",
        type=int,
        default=Settings().sql.batch,
        help="log entries a SQL transaction (default: sql.batch's default)",
    )
    parser.add_argument(
        "--big-batch",
        type=int,
        default=20_000,
        help="PostgreSQL again at this batch (default: the rebuild's); 0: not",
    )
    parser.add_argument("--rebuild-batch", type=int, default=20_000)
    parser.add_argument("--live-tasks", type=int, default=20_000)
    parser.add_argument("--live-seconds", type=float, default=2.5)
    parser.add_argument("--steady-seconds", type=float, default=40.0)
    parser.add_argument("--steady-rate", type=int, default=300, help="tasks/s")
    parser.add_argument(
        "--steady-retention", type=float, default=5.0, help="views' and log's retention, s"
    )
    quick = {
        "events": 20_000,
        "runs": 1,
        "rebuild_batch": 5_000,  # several steps, as with the full log
        "batch": 2_000,
        "big_batch": 5_000,
        "live_tasks": 1_000,
        "live_seconds": 1.0,
        "steady_seconds": 8.0,
        "steady_rate": 100,
        "steady_retention": 2.0,
    }
    args = _quick.parse_args(parser, quick)
    asyncio.run(main(args))
    steady_state(
        seconds=args.steady_seconds, rate=args.steady_rate, retention=args.steady_retention
    )
