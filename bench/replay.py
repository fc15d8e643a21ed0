"""Projection rebuild speed, next to the pure in-memory fold of the same log.

Runs its own redis-server (AOF off) and writes a realistic log of N events to a
fresh namespace: tasks submitted in batches (``submit_many``), then claimed,
started, a few progress reports and an end (mostly succeeded; some failed,
retried and run again, cancelled or dead-lettered; ``append_many``, 5,000 a
call), with many tasks in flight over 8 nodes and node heartbeats. Then, the
median of several runs of:

  in-memory  ``replay(entries)`` over the entries read once (no Redis)
  rebuild    a fresh view namespace and group; ``Projector.step()`` until
             nothing is left: reads, decode, folds, view writes, acks

A rebuild coalesces: the events of one task within a batch cost one view write.
The CPU time of this process and of the server per event, next to the fold's,
says where a rebuild spends its time (the two take turns: a step waits for its
writes).
Last, the live projector's lag while one worker process runs no-op tasks (one
partition: the worker runs with the default config).

Usage: python bench/replay.py [--events N] [--partitions P] [--batch B] [--runs R]
                              [--in-flight W] [--live-tasks T] [--live-seconds S] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import _quick
from redis.asyncio import Redis
from throughput import ended, start_worker, wait_started

from eventcore import events as ev
from eventcore.connection import make_client
from eventcore.ids import stream_id_key
from eventcore.keys import Keys
from eventcore.log import EventLog, Submission
from eventcore.nodes import append_node_event
from eventcore.server.process import ServerConfig, ServerProcess, find_server_binary, free_port
from projections.replay import Views, replay
from projections.runner import Projector, tune_gc
from projections.store import ViewStore
from projections.tools import drop_views

QUEUES = {"cpu-light": ("thumbnail", "checksum", "noop"), "cpu-heavy": ("pdf",), "gpu": ("embed",)}
NODES = [f"node-{i}" for i in range(8)]
OUTCOMES = {"cancel-queued": 1, "retry": 6, "dead": 1, "cancel": 1, "fail": 4, "ok": 87}
TRACE = 'Traceback (most recent call last):\n  File "handlers.py", line 42, in run\n' * 4
SUBMIT_BATCH, APPEND_BATCH = 500, 5000
DT = 0.0005  # simulated seconds per event: the `at` of every event but TaskSubmitted


class Gen:
    """Writes the log: a pool of in-flight tasks, each a generator of its events;
    ``progress``: at most that many progress reports an attempt (none: about 4
    events a task)."""

    def __init__(
        self, log: EventLog, n: int, in_flight: int, seed: int = 1, progress: int = 3
    ) -> None:
        self.elog, self.n, self.in_flight, self.progress = log, n, in_flight, progress
        self.rng = random.Random(seed)
        self.t0 = time.time()
        self.written = 0  # events written or buffered
        self.buf: list[ev.Event] = []
        self.held: dict[str, set[str]] = {node: set() for node in NODES}

    def now(self) -> float:
        return self.t0 + self.written * DT

    def life(self, tid: str, eid: str, kind: str) -> Iterator[ev.Event]:
        def e(cls: type[ev.Event], **kw: Any) -> ev.Event:
            return cls(task_id=tid, at=self.now(), **kw)

        rng = self.rng
        end = rng.choices(list(OUTCOMES), list(OUTCOMES.values()))[0]
        if end == "cancel-queued":
            yield e(ev.TaskCancelRequested, reason="user", by="api")
            yield e(ev.TaskCancelled, reason="user")
            return
        attempts = 2 if end == "retry" else 1
        for att in range(1, attempts + 1):
            node = rng.choice(NODES)
            self.held[node].add(tid)
            yield e(ev.TaskClaimed, node=node, attempt=att, deliveries=1, entry_id=eid)
            yield e(ev.TaskStarted, node=node, attempt=att, pid=1000)
            started = self.now()
            for k in range(rng.randint(0, self.progress)):
                yield e(ev.TaskProgress, attempt=att, progress=(k + 1) / 4, message=kind)
            self.held[node].discard(tid)  # runs when the next event is asked for
            if att < attempts:
                err = ev.ErrorInfo(type="IOError", message="upstream 503", traceback=TRACE)
                run_at = self.now() + 2
                yield e(ev.TaskRetryScheduled, attempt=att + 1, run_at=run_at, delay=2, error=err)
            elif end == "dead":  # its node died: delivered again elsewhere, then parked
                other = rng.choice(NODES)
                yield e(ev.TaskClaimed, node=other, attempt=1, deliveries=2, entry_id=eid)
                yield e(ev.TaskDeadLettered, deliveries=2, reason="max deliveries", node=other)
            elif end == "cancel":
                yield e(ev.TaskCancelRequested, reason="user", by="api")
                yield e(ev.TaskCancelled, node=node, reason="user")
            elif end == "fail" or (end == "retry" and rng.random() < 0.25):
                err = ev.ErrorInfo(type="ValueError", message="bad input", traceback=TRACE)
                yield e(ev.TaskFailed, node=node, attempt=att, error=err)
            else:
                result = {"ok": True, "bytes": rng.randint(1, 10**6)}
                took = self.now() - started
                yield e(ev.TaskSucceeded, node=node, attempt=att, result=result, duration=took)

    async def emit(self, event: ev.Event) -> None:
        self.buf.append(event)
        self.written += 1
        if len(self.buf) >= APPEND_BATCH:
            await self.flush()

    async def flush(self) -> None:
        if self.buf:
            await self.elog.append_many(self.buf)
            self.buf = []

    async def run(self) -> int:
        caps = ev.Capabilities(cpu_cores=16, memory_mb=65536, handlers=("noop",))
        for node in NODES:
            await append_node_event(self.elog, ev.NodeStarted(node=node, capabilities=caps))
        self.written += len(NODES)
        pool: list[Iterator[ev.Event]] = []
        names = [(q, k) for q, kinds in QUEUES.items() for k in kinds]
        weights = [6 if q == "cpu-light" else 1 for q, _ in names]
        hb, batch = 0, min(SUBMIT_BATCH, self.in_flight)
        while pool or self.written < self.n:
            wanted = self.written + 5 * len(pool) < self.n  # about 5 events to go per task
            if wanted and len(pool) <= self.in_flight - batch:
                specs = [
                    ev.TaskSpec(kind=k, queue=q, params={"n": i, "src": f"s3://in/{i}.bin"})
                    for i, (q, k) in enumerate(self.rng.choices(names, weights, k=batch))
                ]
                res = await self.elog.submit_many([Submission(spec=s) for s in specs])
                self.written += len(res)
                pool += [self.life(r.task_id, r.event_id, s.kind) for r, s in zip(res, specs)]
            i = self.rng.randrange(len(pool))
            if (event := next(pool[i], None)) is None:
                pool[i] = pool[-1]
                pool.pop()
                continue
            await self.emit(event)
            if self.written // 2000 > hb:  # each node about once a simulated second
                hb = self.written // 2000
                for node in NODES:
                    run = tuple(sorted(self.held[node]))
                    await self.emit(ev.NodeHeartbeat(node=node, running=run, free_slots=200))
        await self.flush()
        return self.written


async def read_all(log: EventLog, chunk: int = 20_000) -> list[Any]:
    out: list[Any] = []
    for stream in [log.keys.events(p) for p in log.keys.all_partitions()] + [log.keys.nodes()]:
        start = "-"
        while got := await log.read(stream, start, "+", count=chunk):
            out += got
            start = "(" + got[-1].id
    return out


async def server_cpu(redis: Redis) -> float:
    """CPU seconds the server has used (user + system)."""
    info = await redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


class Rebuilt(NamedTuple):
    rate: float  # events/s
    client_us: float  # this process's CPU per event, microseconds
    server_us: float  # the server's CPU per event, microseconds
    store: ViewStore


async def caught_up_views(log: EventLog) -> ViewStore:
    """Views in use that have folded the whole log (only their watermark is
    written): what a rebuild runs beside in a live system. It writes no feed
    entries for what they already announced, as ``replay rebuild`` does."""
    store = ViewStore(log, "in-use")
    tips = {}
    for stream in [log.keys.events(p) for p in log.keys.all_partitions()] + [log.keys.nodes()]:
        newest = await log.redis.xrevrange(stream, count=1)
        if newest:
            tips[stream] = newest[0][0].decode()
    for shard in store.shards.values():
        marks = {s: i for s, i in tips.items() if s in shard.streams}
        await shard.write(Views(), Views(), marks, feed=False)
    return store


async def rebuild(
    log: EventLog, run: int, batch: int, timeout: float, in_use: ViewStore
) -> Rebuilt:
    store = ViewStore(log, f"bench-{run}")  # a fresh namespace, with its own fresh group
    projector = Projector(log, store, batch=batch, feed_after=in_use)
    server0, cpu0 = await server_cpu(log.redis), time.process_time()
    n, t0 = 0, time.perf_counter()
    while got := await projector.step(block_ms=None):
        n += got
        if time.perf_counter() - t0 > timeout:
            raise RuntimeError(f"rebuild took over {timeout:.0f} s")
    seconds = time.perf_counter() - t0
    client, server = time.process_time() - cpu0, await server_cpu(log.redis) - server0
    return Rebuilt(n / seconds, client / n * 1e6, server / n * 1e6, store)


def sample_of(views: Views, n: int = 2000) -> Views:
    """Every node, queue and stats view, and ``n`` task views: what a rebuild is checked on."""
    ids = random.Random(2).sample(sorted(views.tasks), min(n, len(views.tasks)))
    rest = {f: getattr(views, f) for f in ("nodes", "queues", "stats", "stats_by")}
    return Views(tasks={t: views.tasks[t] for t in ids}, **rest)


async def live_lag(redis: Redis, url: str, tasks: int, seconds: float) -> str:
    ns = "b" + uuid.uuid4().hex[:10]
    log = EventLog(redis, Keys(ns))
    worker = start_worker(url, ns, 1000)
    stop, done = asyncio.Event(), asyncio.Event()
    try:
        await wait_started(redis, log.keys, f"bench-{ns}")
        projector = Projector(log)  # the live view namespace, the default batch
        runner = asyncio.create_task(projector.run(stop))
        stream, lag_events, lag_ms, stale = log.keys.events(0), [], [], []

        async def heads() -> tuple[int, str, str]:
            """Entries in every stream read, the newest task event id, the watermark."""
            if runner.done():
                runner.result()  # the projector died: raise its error
            async with redis.pipeline(transaction=False) as pipe:
                for s in projector.streams:
                    pipe.xlen(s)
                pipe.xrevrange(stream, count=1)
                pipe.hget(
                    projector.store.shard(log.keys.shard_of_stream(stream)).watermark_key, stream
                )
                *lens, newest, mark = await pipe.execute()
            return sum(lens), newest[0][0].decode() if newest else "0", (mark or b"0").decode()

        async def sampler() -> None:
            while not done.is_set():
                total, newest, mark = await heads()
                lag_events.append(total - projector.applied)
                applied_ms = max(stream_id_key(mark)[0], t0_ms)
                lag_ms.append(max(0, stream_id_key(newest)[0] - applied_ms))
                behind = stream_id_key(mark) < stream_id_key(
                    newest
                )  # views as of applied_ms, not now
                stale.append(max(0, int(time.time() * 1000) - applied_ms) if behind else 0)
                await asyncio.sleep(0.1)

        t0, t0_ms = time.perf_counter(), int(time.time() * 1000)
        sampling = asyncio.create_task(sampler())
        spec = ev.TaskSpec(kind="noop", queue="cpu-light")
        for b, start in enumerate(range(0, tasks, SUBMIT_BATCH)):
            await asyncio.sleep(
                max(0, t0 + b * seconds * SUBMIT_BATCH / tasks - time.perf_counter())
            )
            await log.submit_many([Submission(spec=spec)] * min(SUBMIT_BATCH, tasks - start))
        submit_s = time.perf_counter() - t0
        deadline = time.monotonic() + 120
        while await ended(redis, log.keys) < tasks:
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("worker died, or tasks did not end within 120 s")
            await asyncio.sleep(0.005)
        _, last, mark = await heads()  # the newest entry is the last terminal event
        while stream_id_key(mark) < stream_id_key(last):
            if time.monotonic() > deadline:
                raise RuntimeError("the projector did not catch up within 120 s")
            await asyncio.sleep(0.002)
            mark = (await heads())[2]
        catch_up = time.time() * 1000 - stream_id_key(last)[0]
        done.set()
        await asyncio.wait_for(sampling, 5)
        stop.set()
        await asyncio.wait_for(runner, 5)
        return (
            f"  live projector: {tasks:,} no-op tasks submitted over {submit_s:.1f} s to one "
            f"worker (concurrency 1000); {projector.applied:,} events applied in "
            f"{time.perf_counter() - t0:.1f} s\n    lag, sampled every 100 ms: "
            f"p50 {statistics.median(lag_events):,.0f} / max {max(lag_events):,} events, "
            f"p50 {statistics.median(lag_ms):,.0f} / max {max(lag_ms):,} ms (newest id - watermark"
            f" id); staleness (now - watermark id) p50 {statistics.median(stale):,.0f} / max "
            f"{max(stale):,} ms\n    views caught up {catch_up:.0f} ms after the last task ended"
        )
    finally:
        stop.set()
        worker.terminate()
        worker.wait(30)


def runs(values: list[float]) -> str:
    return ", ".join(f"{x:,.0f}" for x in values)


async def main(args: argparse.Namespace) -> None:
    binary = find_server_binary(prefer="path")
    with tempfile.TemporaryDirectory(prefix="ec-bench-") as tmp:
        server = ServerProcess(binary, ServerConfig(Path(tmp), port=free_port()))
        url = server.start()
        redis = make_client(url)
        try:
            log = EventLog(redis, Keys("b" + uuid.uuid4().hex[:10], args.partitions))
            t0 = time.perf_counter()
            n = await Gen(log, args.events, args.in_flight).run()
            gen_s = time.perf_counter() - t0
            print(f"generated {n:,} events in {gen_s:.1f} s ({n / gen_s:,.0f}/s)", flush=True)
            entries = await read_all(log)
            assert len(entries) == n, (len(entries), n)
            mem, rebuilt, match, views = [], [], True, None
            for _ in range(args.runs):
                views = None  # no garbage from the last run left to the collector
                gc.collect()
                t0 = time.perf_counter()
                views = replay(entries)
                mem.append(n / (time.perf_counter() - t0))
            assert views is not None
            tasks, expected = len(views.tasks), sample_of(views)
            del entries, views  # a rebuild runs without a million objects to scan
            cpu: list[tuple[float, float]] = []
            in_use = await caught_up_views(log)
            tune_gc()  # as `eventcore replay rebuild` and `eventcore project` do
            for run in range(args.runs):
                gc.collect()
                result = await rebuild(log, run, args.batch, args.timeout, in_use)
                rebuilt.append(result.rate)
                cpu.append((result.client_us, result.server_us))
                match = match and await result.store.load(list(expected.tasks)) == expected
                await drop_views(log, result.store.ns)
            live = await live_lag(redis, url, args.live_tasks, args.live_seconds)
        finally:
            await redis.aclose()
            server.stop()
    m, r = statistics.median(mem), statistics.median(rebuilt)
    print(
        f"server: {binary.flavor} {'.'.join(map(str, binary.version))}; {n:,} events, "
        f"{tasks:,} tasks, {args.in_flight} in flight, {args.partitions} "
        f"partition(s); median of {args.runs} runs"
    )
    print(f"  in-memory replay()     {m:>9,.0f} events/s   (runs: {runs(mem)})")
    print(f"  rebuild, batch {args.batch:<6}  {r:>9,.0f} events/s   (runs: {runs(rebuilt)})")
    print(f"  ratio rebuild / in-memory = {r / m:.2f}   (target: rebuild >= 100,000 events/s)")
    client_us, server_us = (statistics.median(c[i] for c in cpu) for i in (0, 1))
    print(
        f"  rebuild CPU per event: this process {client_us:.1f} us (the in-memory fold alone: "
        f"{1e6 / m:.1f} us), the server {server_us:.1f} us"
    )
    print(f"  rebuilt views equal replay() (all node/queue/stats, 2,000 tasks): {match}")
    print(live)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=1)
    parser.add_argument("--batch", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--in-flight", type=int, default=1000)
    parser.add_argument("--live-tasks", type=int, default=20_000)
    parser.add_argument("--live-seconds", type=float, default=2.5)
    parser.add_argument("--timeout", type=float, default=900, help="per rebuild, seconds")
    quick = {
        "events": 20_000,
        "batch": 5_000,  # several steps per rebuild, as with the full log
        "runs": 1,
        "in_flight": 500,
        "live_tasks": 1_000,
        "live_seconds": 1.0,
        "timeout": 60,
    }
    asyncio.run(main(_quick.parse_args(parser, quick)))
