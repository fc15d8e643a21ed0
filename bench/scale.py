"""Scaling out: one Redis against a local Redis Cluster, one projector against two.

All in one run, printed side by side:

1. no-op workload: N no-op tasks submitted (batched), then ONE worker process
   (`eventcore worker`) started, on a single server and on a local 3-master
   cluster, with the same number of partitions (3) on both. tasks/s (from the
   worker's start until every task is terminal) and the Redis CPU per task,
   summed over every server (INFO cpu, user + sys, read before the submit and
   after the last task ended). Ratio cluster / single of the CPU per task.
2. spread, from the cluster runs: tasks per partition (``Keys.partition``) and
   per master (the master serving the slot of the partition's event stream:
   CLUSTER KEYSLOT, CLUSTER SLOTS), as the deviation from an even share, and
   the Redis CPU each master used.
3. projection: a log of E events over 4 partitions written once (the
   generator of bench/replay.py), then folded from zero into fresh views by 1
   and by 2 `eventcore project` processes; time from their start until the
   views' watermark (the union of every view shard's) has reached the last
   entry of every stream. events/s for 1 and 2, and the ratio. The 4
   partitions make 5 view shards (one per partition and the node shard),
   leased one projector at a time: two projectors hold two partitions'
   shards each, the light node shard going to whichever finds it free (shown
   per run: which shards each held), after the first to start, which takes
   every shard, gives two back within about a second. So the 2-projector
   rate is also shown from the moment both hold their share (the entries
   applied by then counted from the watermark), next to the rate from their
   start. The CPU Redis, each projector and the whole
   machine used meanwhile is shown too (on a machine others share, the
   projectors may get no more CPU with two than with one), and the bound the
   1-projector CPU per event puts on the ratio where Redis runs on the same
   cores. The views the 2 projectors wrote are compared with the ones 1
   projector wrote (a sample of task views): a speed-up with stale views is
   no speed-up.
4. a PROJECTION (a model, not a measurement) of the throughput of 3, 6 and 12
   masters on separate machines, from the Redis CPU per task measured on the
   cluster, the worker's CPU per task and the projector's fold rate.

Figures, never assertions. The targets of the scaling work are printed next
to the figures.

Usage: python bench/scale.py [--tasks N] [--runs R] [--concurrency C]
                             [--events E] [--lease-ms MS] [--deadline S] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from bisect import bisect_right
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import _quick
from replay import Gen

from eventcore.codec import text
from eventcore.connection import Client, ClientOptions, connect, make_client
from eventcore.events import TaskSpec
from eventcore.keys import NODE_SHARD, Keys
from eventcore.log import EventLog, Submission
from eventcore.server.cluster import LocalCluster
from eventcore.server.process import (
    ServerBinary,
    ServerConfig,
    ServerProcess,
    find_server_binary,
    free_port,
)
from projections.pool import fair_share, lease_holders
from projections.store import ViewStore, drop_views

SPEC = TaskSpec(kind="noop", queue="cpu-light")
BATCH = 500
PARTITIONS = 3  # of the no-op workload, on both servers
MASTERS = 3
FOLD_PARTITIONS = 4  # of the log the projectors fold
LAYOUTS = (3, 4, 6, 12)  # partition counts whose placement on the masters is shown
POLL = 0.02  # seconds between looks at a run's progress (each look costs Redis CPU too)
TICKS = os.sysconf("SC_CLK_TCK")

CPU_TARGET = 1.25  # cluster / single, Redis CPU per task
SPREAD_TARGET = 10.0  # %, from an even share
FOLD_TARGET = 1.7  # 2 projectors / 1


# -- the servers ---------------------------------------------------------------------


@dataclass
class Servers:
    """What a workload runs on: the URL its roles use, and one URL per server
    process (a cluster's masters) to read each one's CPU from."""

    name: str
    url: str
    node_urls: list[str]
    cluster: bool

    async def client(self) -> Client:
        return await connect(self.url, ClientOptions(cluster=self.cluster))


async def server_cpu(urls: Sequence[str]) -> list[float]:
    """CPU seconds (user + sys) each server has used, from INFO cpu."""
    out = []
    for url in urls:
        node = make_client(url, ClientOptions(cluster=False))
        try:
            info = await node.info("cpu")
        finally:
            await node.aclose()
        out.append(float(info["used_cpu_user"]) + float(info["used_cpu_sys"]))
    return out


def process_cpu(pid: int) -> float:
    """CPU seconds (user + sys) of a process and its live children, from /proc."""
    total = 0.0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
            # Fields after the command name (which may hold spaces): utime, stime
            # are the 14th and 15th of the whole line.
            fields = stat.rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICKS
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError, IndexError):
            continue  # it ended meanwhile
    return total


def machine_busy() -> float:
    """CPU seconds every core of the machine has been busy (not idle, not
    waiting for I/O), from /proc/stat: with the processes of others too."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / TICKS


# -- 1. the no-op workload -----------------------------------------------------------


def role_env(url: str, namespace: str, partitions: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTCORE_")}
    env.update(REDIS_URL=url, EVENTCORE_NAMESPACE=namespace, EVENTCORE_PARTITIONS=str(partitions))
    return env


def start_worker(url: str, namespace: str, concurrency: int) -> subprocess.Popen[bytes]:
    argv = ["worker", "--cpu", "--queues", "cpu-light", "--concurrency", str(concurrency)]
    argv += ["--node", f"bench-{namespace}"]
    return subprocess.Popen(
        [sys.executable, "-m", "eventcore.cli", *argv],
        env=role_env(url, namespace, PARTITIONS),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def ended(redis: Client, keys: Keys) -> int:
    return sum([await redis.hlen(keys.done(p)) for p in keys.all_partitions()])


@dataclass
class Workload:
    """One run of the no-op workload."""

    rate: float  # tasks/s, from the worker's start until every task ended
    ready_rate: float  # tasks/s, from its first sign of life (imports done)
    redis_us: float  # Redis CPU per task, summed over the servers, microseconds
    per_server_us: list[float]  # the same, each server's own
    worker_us: float  # the worker process's CPU per task after its start-up, microseconds
    submit_us: float  # this process's CPU per task while submitting, microseconds
    events_per_task: float
    task_ids: list[str] = field(repr=False)


async def workload(servers: Servers, n: int, concurrency: int, deadline: float) -> Workload:
    ns = "b" + uuid.uuid4().hex[:10]
    redis = await servers.client()
    keys = Keys(ns, PARTITIONS)
    log = EventLog(redis, keys)
    try:
        cpu0 = await server_cpu(servers.node_urls)
        own0 = time.process_time()
        task_ids = []
        for start in range(0, n, BATCH):
            got = await log.submit_many([Submission(spec=SPEC)] * min(BATCH, n - start))
            task_ids += [r.task_id for r in got]
        submit_cpu = time.process_time() - own0
        t0 = time.perf_counter()
        worker = start_worker(servers.url, ns, concurrency)
        node = f"bench-{ns}"
        try:
            worker_cpu, ready, ready_cpu = 0.0, None, 0.0
            give_up = time.monotonic() + deadline
            while await ended(redis, keys) < n:
                if ready is None and await redis.hexists(keys.nodes_seen(), node):
                    ready, ready_cpu = time.perf_counter(), process_cpu(worker.pid)
                if worker.poll() is not None:
                    raise RuntimeError(f"the worker exited with {worker.returncode}")
                if time.monotonic() > give_up:
                    left = n - await ended(redis, keys)
                    raise RuntimeError(f"{left} of {n} tasks not ended after {deadline:.0f} s")
                await asyncio.sleep(POLL)
            end = time.perf_counter()
            worker_cpu = process_cpu(worker.pid) - ready_cpu
        finally:
            worker.terminate()
            worker.wait(30)
        cpu1 = await server_cpu(servers.node_urls)
        events = sum([await redis.xlen(keys.events(p)) for p in keys.all_partitions()])
        await drop_run(redis, keys)
    finally:
        await redis.aclose()
    per_server = [(b - a) / n * 1e6 for a, b in zip(cpu0, cpu1)]
    return Workload(
        rate=n / (end - t0),
        ready_rate=n / (end - (ready or t0)),
        redis_us=sum(per_server),
        per_server_us=per_server,
        worker_us=worker_cpu / n * 1e6,
        submit_us=submit_cpu / n * 1e6,
        events_per_task=events / n,
        task_ids=task_ids,
    )


async def drop_run(redis: Client, keys: Keys) -> None:
    """Delete the run's keys, so the next run starts from empty servers."""
    batch: list[bytes] = []
    async for key in redis.scan_iter(match=keys.all_keys_pattern(), count=1000):
        batch.append(key)
    for key in batch:  # one by one: on a cluster the keys live in different slots
        await redis.unlink(key)


# -- 2. spread over partitions and masters -------------------------------------------


async def masters_of(seed_url: str, keys: Sequence[str]) -> tuple[list[str], list[str]]:
    """The masters of the cluster (``host:port``, by their first slot) and the
    master serving each key: CLUSTER KEYSLOT, then CLUSTER SLOTS."""
    node = make_client(seed_url, ClientOptions(cluster=False))
    try:
        slots = [int(await node.execute_command("CLUSTER KEYSLOT", k)) for k in keys]
        ranges = await node.execute_command("CLUSTER SLOTS")
    finally:
        await node.aclose()
    owners: list[tuple[int, int, str]] = []
    if isinstance(ranges, dict):  # redis-py parses it: {(first, last): {"primary": (host, port)}}
        for (first, last), where in ranges.items():
            host, port = where["primary"][:2]
            owners.append((int(first), int(last), f"{text(host)}:{port}"))
    else:  # the raw reply: [first, last, [host, port, id], replicas...]
        for first, last, primary, *_ in ranges:
            owners.append((int(first), int(last), f"{text(primary[0])}:{primary[1]}"))
    owners.sort()
    masters = list(dict.fromkeys(name for _, _, name in owners))
    of_key = [next(name for first, last, name in owners if first <= s <= last) for s in slots]
    return masters, of_key


def deviation(counts: Sequence[int]) -> list[float]:
    """Each count's deviation from an even share of their sum, in %."""
    even = sum(counts) / len(counts)
    return [(c / even - 1) * 100 for c in counts]


def spread_lines(
    task_ids: list[str], masters: list[str], master_of_partition: list[str], cpu_us: list[float]
) -> list[str]:
    keys = Keys("ec", PARTITIONS)
    per_part = Counter(keys.partition(t) for t in task_ids)
    parts = [per_part[p] for p in range(PARTITIONS)]
    per_master = [
        sum(parts[p] for p in range(PARTITIONS) if master_of_partition[p] == m) for m in masters
    ]
    n = len(task_ids)
    lines = [f"spread of {n:,} tasks (target: every share within ±{SPREAD_TARGET:g}% of even)"]
    for p, (count, dev) in enumerate(zip(parts, deviation(parts))):
        lines.append(
            f"  partition {p}  {count:>8,} tasks  {dev:+6.1f}%   (master {master_of_partition[p]})"
        )
    cpu_total = sum(cpu_us) or 1.0
    for m, count, dev, cpu in zip(masters, per_master, deviation(per_master), cpu_us):
        held = [str(p) for p in range(PARTITIONS) if master_of_partition[p] == m] or ["none"]
        lines.append(
            f"  master {m}  {count:>8,} tasks  {dev:+6.1f}%   partitions {','.join(held)}; "
            f"Redis CPU {cpu:,.1f} us/task ({cpu / cpu_total:.0%} of the cluster's)"
        )
    worst = max(map(abs, deviation(parts) + deviation(per_master)))
    lines.append(f"  largest deviation {worst:.1f}% (target ±{SPREAD_TARGET:g}%)")
    return lines


# -- 3. projection: 1 vs 2 projectors ------------------------------------------------


EntryId = tuple[int, int]


def entry_key(entry_id: str) -> EntryId:
    ms, seq = entry_id.split("-")
    return int(ms), int(seq)


async def stream_entries(log: EventLog) -> dict[str, list[EntryId]]:
    """Every entry id, in order, of every stream the projectors fold (the
    streams of every view shard: the partitions' logs and the node stream)."""
    out: dict[str, list[EntryId]] = {}
    for shard in log.keys.view_shards():
        for stream in log.keys.shard_streams(shard):
            ids: list[EntryId] = []
            after = "-"
            while True:
                got = await log.redis.xrange(stream, min=after, count=10_000)
                ids += [entry_key(text(entry_id)) for entry_id, _ in got]
                if len(got) < 10_000:
                    break
                after = "(" + text(got[-1][0])
            if ids:
                out[stream] = ids
    return out


def stream_ends(entries: dict[str, list[EntryId]]) -> tuple[dict[str, str], int]:
    """The last entry id of every stream, and how many entries in all."""
    ends = {s: f"{ids[-1][0]}-{ids[-1][1]}" for s, ids in entries.items()}
    return ends, sum(map(len, entries.values()))


def applied_count(marks: dict[str, str], entries: dict[str, list[EntryId]]) -> int:
    """How many of ``entries`` the watermark ``marks`` covers."""
    return sum(bisect_right(ids, entry_key(marks[s])) for s, ids in entries.items() if s in marks)


async def applied_marks(log: EventLog, view_ns: str) -> dict[str, str]:
    """The last entry id the views of ``view_ns`` applied, per stream: the
    union of every view shard's watermark (each shard's watermark holds the
    marks of the streams that shard folds). Everything else reads marks only
    through this function."""
    return await ViewStore(log, view_ns).watermark()


def not_reached(marks: dict[str, str], ends: dict[str, str]) -> dict[str, tuple[str, str]]:
    """The streams whose mark is behind their last entry: stream -> (mark, end)."""
    return {
        s: (marks.get(s, "none"), end)
        for s, end in ends.items()
        if s not in marks or entry_key(marks[s]) < entry_key(end)
    }


def holder_names(holders: dict[str, str | None]) -> list[str | None]:
    """The projector holding each shard (a lease's token is ``<name>:<random>``)."""
    return [None if token is None else token.rsplit(":", 1)[0] for token in holders.values()]


def shards_by_holder(holders: dict[str, str | None]) -> str:
    """The shards each projector holds, the most first: e.g. ``0,1,n / 2,3``."""
    held: dict[str | None, list[str]] = {}
    for shard, name in zip(holders, holder_names(holders)):
        held.setdefault(name, []).append(shard)
    return " / ".join(",".join(s) for s in sorted(held.values(), key=len, reverse=True))


def all_hold(holders: dict[str, str | None], projectors: int) -> bool:
    """Every shard is held, each of the ``projectors`` holding some and none
    more than its fair share (the balancing is over)."""
    names = holder_names(holders)
    partitions = [n for shard, n in zip(holders, names) if shard != NODE_SHARD]
    most = max(Counter(partitions).values(), default=0)
    return (
        None not in names
        and len(set(names)) >= projectors
        and most <= fair_share(len(partitions), projectors)
    )


def start_projector(
    url: str, namespace: str, view_ns: str, out: Path, lease_ms: int | None = None
) -> subprocess.Popen[bytes]:
    env = role_env(url, namespace, FOLD_PARTITIONS)
    if lease_ms is not None:
        env["EVENTCORE_PROJECTOR__LEASE_MS"] = str(lease_ms)
    with open(out, "ab") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "eventcore.cli", "project", "--views", view_ns],
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
        )


@dataclass
class Fold:
    seconds: float | None  # None: did not catch up
    from_first: float | None  # seconds from the first mark written
    missing: dict[str, tuple[str, str]]  # stream -> (mark, end), when it did not catch up
    applied: list[int | None]  # entries each process says it applied when it stopped
    note: str = ""
    # From the first look at which every shard was held, each projector holding
    # some and none more than its fair share: seconds since the start, entries
    # applied by then, seconds from then to the end, and the shards each held
    # then (e.g. "0,1,n / 2,3").
    all_held_at: float | None = None
    applied_then: int = 0
    from_all_held: float | None = None
    split: str = ""
    # CPU seconds over the fold: the Redis server, each projector process, the
    # whole machine (everyone's processes).
    redis_cpu: float = 0.0
    projector_cpu: list[float] = field(default_factory=list)
    machine_cpu: float = 0.0


APPLIED_RE = re.compile(r"projector stopped: (\d+) entries applied")


def applied_by(out: Path) -> int | None:
    """What a projector printed it applied, when it stopped (None: it did not say)."""
    found = APPLIED_RE.findall(out.read_text(errors="replace")) if out.exists() else []
    return int(found[-1]) if found else None


async def fold(
    log: EventLog,
    url: str,
    projectors: int,
    view_ns: str,
    entries: dict[str, list[EntryId]],
    deadline: float,
    tmp: Path,
    marks_of: Callable[[EventLog, str], Awaitable[dict[str, str]]] = applied_marks,
    lease_ms: int | None = None,
) -> Fold:
    """Start ``projectors`` processes on the empty views ``view_ns`` and wait
    until ``marks_of`` says every stream reached its end (the last of
    ``entries``), for at most ``deadline`` seconds. Until every projector
    holds shards, each look also reads who holds each shard."""
    ends, _ = stream_ends(entries)
    outs = [tmp / f"{view_ns}-{i}.log" for i in range(projectors)]
    redis0, machine0 = (await server_cpu([url]))[0], machine_busy()
    t0 = time.perf_counter()
    procs = [start_projector(url, log.keys.namespace, view_ns, out, lease_ms) for out in outs]
    first = end = held_at = None
    applied_then, split = 0, ""
    note = ""
    try:
        give_up = time.monotonic() + deadline
        while True:
            if held_at is None:
                holders = await lease_holders(log, view_ns)
            looked = time.perf_counter()
            marks = await marks_of(log, view_ns)
            if held_at is None and all_hold(holders, projectors):
                # The marks are read after the moment taken: they count at least
                # the entries applied by then, so the rate from then is not
                # overstated.
                held_at = looked
                applied_then = applied_count(marks, entries)
                split = shards_by_holder(holders)
            if marks and first is None:
                first = time.perf_counter()
            missing = not_reached(marks, ends)
            if not missing:
                end = time.perf_counter()
                own_cpu = [process_cpu(p.pid) for p in procs]
                redis_cpu = (await server_cpu([url]))[0] - redis0
                machine_cpu = machine_busy() - machine0
                break
            dead = [p for p in procs if p.poll() is not None]
            if dead:
                tail = outs[procs.index(dead[0])].read_text(errors="replace").splitlines()
                note = f"a projector exited with {dead[0].returncode}: " + " | ".join(tail[-3:])
                break
            if time.monotonic() > give_up:
                break
            await asyncio.sleep(POLL)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    applied = [applied_by(out) for out in outs]
    if end is None:
        return Fold(None, None, missing, applied, note)
    return Fold(
        end - t0,
        end - (first or t0),
        {},
        applied,
        all_held_at=None if held_at is None else held_at - t0,
        applied_then=applied_then,
        from_all_held=None if held_at is None else end - held_at,
        split=split,
        redis_cpu=redis_cpu,
        projector_cpu=own_cpu,
        machine_cpu=machine_cpu,
    )


async def differing(log: EventLog, view_ns: str, reference: str, sample: list[str]) -> int:
    """How many of the sampled task views differ from the reference views'."""
    got = (await ViewStore(log, view_ns).load(sample)).tasks
    want = (await ViewStore(log, reference).load(sample)).tasks
    return sum(got.get(t) != want.get(t) for t in sample)


# -- 4. the model --------------------------------------------------------------------


def model_lines(cluster: Workload, fold_rate: float | None, masters: Sequence[int]) -> list[str]:
    """The projection to more masters, and the model behind it, as lines."""
    redis_us, worker_us = cluster.redis_us, cluster.worker_us
    events, submit_us = cluster.events_per_task, cluster.submit_us
    folds = "unmeasured"
    if fold_rate:
        folds = f"{fold_rate:,.0f} events/s each (1 projector, from its first batch)"
    model = (
        f"Model: the Redis CPU per task measured on the local cluster ({redis_us:,.1f} us, "
        "summed over its masters) is spread evenly over M masters, each on a machine of its own "
        "where it can use one whole core (Redis runs commands on one thread): M masters carry "
        f"M x 1e6 / {redis_us:,.1f} tasks/s. The other roles run on further machines, one core "
        f"per process, at their measured costs: workers {worker_us:,.1f} us/task, submitters "
        f"(batched submit_many) {submit_us:,.1f} us/task, projectors {folds} for "
        f"{events:.1f} events/task. Assumed: partitions spread evenly over the masters, a cost "
        "per task that does not grow with M, a network that is not the limit; the views are kept "
        "per partition (one view shard per partition, spread over the masters like the "
        "partitions, plus a node shard), so their writes spread with the partitions. Not "
        "modelled: the single-slot pieces, the node stream ({n}) with its node shard, and the "
        "view pointer and projector list ({v}, read and renewed every third of a lease, not "
        "per event)."
    )
    lines = ["PROJECTION from the measured per-shard cost (a model, not a measurement):"]
    lines += textwrap.wrap(model, 96, initial_indent="  ", subsequent_indent="  ")
    lines.append(
        f"  {'masters':>8} {'tasks/s':>12} {'worker procs':>13} {'submitters':>11} "
        f"{'projectors':>11}"
    )
    for m in masters:
        rate = m * 1e6 / redis_us
        proj = f"{rate * events / fold_rate:>11.1f}" if fold_rate else f"{'n/a':>11}"
        lines.append(
            f"  {m:>8} {rate:>12,.0f} {rate * worker_us / 1e6:>13.1f} "
            f"{rate * submit_us / 1e6:>11.1f} {proj}"
        )
    busiest = max(cluster.per_server_us)
    placed = (
        f"With the placement measured above instead of an even one, the busiest of the "
        f"{len(cluster.per_server_us)} masters ({busiest:,.1f} us/task) caps them at "
        f"{1e6 / busiest:,.0f} tasks/s."
    )
    lines += textwrap.wrap(placed, 96, initial_indent="  ", subsequent_indent="  ")
    return lines


# -- the run -------------------------------------------------------------------------


def med(values: Sequence[float]) -> float:
    return statistics.median(values)


def runs_of(values: Sequence[float], fmt: str = ",.0f") -> str:
    return ", ".join(format(v, fmt) for v in values)


async def no_op_part(
    binary: ServerBinary, tmp: Path, args: argparse.Namespace
) -> tuple[dict[str, list[Workload]], list[str], list[str], dict[int, list[int]]]:
    """Runs of the workload on both, alternating; the cluster's masters and the
    master of each partition."""
    single = ServerProcess(binary, ServerConfig(tmp / "single", port=free_port()))
    cluster = LocalCluster(tmp / "cluster", MASTERS, binary)
    single_url = single.start()
    try:
        cluster.start()
        try:
            on = [
                Servers("single server", single_url, [single_url], False),
                Servers(f"{MASTERS}-master cluster", cluster.url, cluster.urls, True),
            ]
            results: dict[str, list[Workload]] = {s.name: [] for s in on}
            for _ in range(args.runs):
                for servers in on:
                    results[servers.name].append(
                        await workload(servers, args.tasks, args.concurrency, args.deadline)
                    )
            stream_keys = [Keys("ec", PARTITIONS).events(p) for p in range(PARTITIONS)]
            masters, of_partition = await masters_of(cluster.url, stream_keys)
            layouts = {}
            for count in LAYOUTS:
                keys = [Keys("ec", count).events(p) for p in range(count)]
                owner = (await masters_of(cluster.url, keys))[1]
                layouts[count] = [owner.count(m) for m in masters]
            # CPU per master, in the order of masters_of (cluster.urls are the same
            # nodes, in start order).
            order = [f"127.0.0.1:{node.port}" for node in cluster.nodes]
            for w in results[on[1].name]:
                w.per_server_us = [w.per_server_us[order.index(m)] for m in masters]
        finally:
            cluster.stop()
    finally:
        single.stop()
    return results, masters, of_partition, layouts


async def fold_part(
    binary: ServerBinary, tmp: Path, args: argparse.Namespace
) -> tuple[list[str], float | None]:
    """The projection lines, and one projector's median events/s once it runs."""
    server = ServerProcess(binary, ServerConfig(tmp / "fold", port=free_port()))
    url = server.start()
    notes: list[str] = []
    redis = await connect(url)
    try:
        log = EventLog(redis, Keys("b" + uuid.uuid4().hex[:10], FOLD_PARTITIONS))
        t0 = time.perf_counter()
        await Gen(log, args.events, in_flight=1000).run()
        gen_s = time.perf_counter() - t0
        entries = await stream_entries(log)
        total = sum(map(len, entries.values()))
        rates: dict[int, list[float]] = {1: [], 2: []}
        ready: dict[int, list[float]] = {1: [], 2: []}
        held: dict[int, list[float]] = {1: [], 2: []}  # events/s from when all hold shards
        waits: dict[int, list[str]] = {1: [], 2: []}  # when that was, what they had applied
        cpu: dict[int, list[str]] = {1: [], 2: []}  # where the CPU went, per run
        per_event: list[tuple[float, float]] = []  # 1 projector: (Redis, projector) us/event
        shares: list[str] = []
        reference, sample = None, []
        failed: set[int] = set()
        for run in range(args.runs):
            one_took = None
            for k in (1, 2):
                if k in failed:
                    continue  # once is enough to know, and each costs the whole deadline
                # Two projectors get ten times what one took in this run, at least 30 s.
                deadline = args.deadline
                if one_took is not None:
                    deadline = min(deadline, max(30.0, 10 * one_took))
                view_ns = f"bench-{k}p-r{run}"
                got = await fold(
                    log, url, k, view_ns, entries, deadline, tmp, lease_ms=args.lease_ms
                )
                if got.seconds is None:
                    failed.add(k)
                    behind = "; ".join(f"{s}: at {m}, end {e}" for s, (m, e) in got.missing.items())
                    said = ", ".join("?" if a is None else f"{a:,}" for a in got.applied)
                    notes.append(
                        f"  {k} projector(s), run {run + 1}: did not catch up within "
                        f"{deadline:.0f} s (not run again); the watermark is behind on: {behind}; "
                        f"the processes say they applied {said} of {total:,} entries"
                        + (f"; {got.note}" if got.note else "")
                    )
                else:
                    rates[k].append(total / got.seconds)
                    ready[k].append(total / got.from_first)
                    secs = got.seconds
                    if k == 1:
                        per_event.append(
                            (got.redis_cpu / total * 1e6, sum(got.projector_cpu) / total * 1e6)
                        )
                    cpu[k].append(
                        f"Redis {got.redis_cpu / secs:.0%}, projectors "
                        + "+".join(f"{c / secs:.0%}" for c in got.projector_cpu)
                        + f", machine {got.machine_cpu / secs:.0%} of one core "
                        f"({(got.machine_cpu - got.redis_cpu - sum(got.projector_cpu)) / secs:.0%}"
                        " others, this bench's polling included)"
                    )
                    if got.from_all_held is not None and got.all_held_at is not None:
                        held[k].append((total - got.applied_then) / got.from_all_held)
                        waits[k].append(
                            f"{got.all_held_at:.2f} s, {got.applied_then / total:.0%} applied, "
                            f"shards {got.split}"
                        )
                    if k == 1:
                        one_took = got.seconds
                    elif None not in got.applied:
                        shares.append("/".join(f"{a / total:.0%}" for a in got.applied))
                if reference is None and got.seconds is not None and k == 1:
                    reference = view_ns
                    ids = await ViewStore(log, view_ns).task_ids()
                    sample = random.Random(3).sample(ids, min(args.sample, len(ids)))
                elif reference is not None:
                    bad = await differing(log, view_ns, reference, sample)
                    if bad:
                        notes.append(
                            f"  {k} projector(s), run {run + 1}: {bad:,} of {len(sample):,} "
                            "sampled task views differ from the first 1-projector run's"
                        )
                if view_ns != reference:
                    await drop_views(log, view_ns)
    finally:
        await redis.aclose()
        server.stop()
    shard_count = len(log.keys.view_shards())
    lines = [
        f"projection: {total:,} events over {FOLD_PARTITIONS} partitions ({shard_count} view "
        f"shards; written in {gen_s:.1f} s), folded from zero into fresh views by `eventcore "
        "project` processes (projector lease "
        + ("the default" if args.lease_ms is None else f"{args.lease_ms} ms")
        + ");",
        "  timed from their start until the watermark of every shard reached its streams' "
        "last entry",
    ]
    for k in (1, 2):
        name = f"{k} projector{'s' if k > 1 else ' '}"
        if rates[k]:
            lines.append(
                f"  {name}  {med(rates[k]):>10,.0f} events/s   (from the first batch written: "
                f"{med(ready[k]):,.0f}; runs: {runs_of(rates[k])})"
            )
        else:
            lines.append(f"  {name}  did not catch up")
    for k in (1, 2):
        if held[k]:
            since = "both hold their share" if k > 1 else "it holds every shard"
            lines.append(
                f"  {k} projector{'s' if k > 1 else ' '}  {med(held[k]):>10,.0f} events/s   from "
                f"when {since}, the entries left then "
                f"(runs: {runs_of(held[k])}; reached at {'; '.join(waits[k])})"
            )
    if shares:
        lines.append(f"  entries each of the 2 applied, per run: {', '.join(shares)}")
    cores = os.cpu_count() or 1
    for k in (1, 2):
        if cpu[k]:
            lines.append(
                f"  CPU while {k} projector{'s' if k > 1 else ''} folded (busy share of one "
                f"core over the fold, {cores} cores in all), per run: {'; '.join(cpu[k])}"
            )
    if per_event:
        redis_us = med([r for r, _ in per_event])
        proj_us = med([p for _, p in per_event])
        both = cores * 1e6 / (redis_us + proj_us)  # every core busy with the fold
        one, two = min(1e6 / proj_us, both), min(2e6 / proj_us, both)
        lines.append(
            f"  CPU per event with 1 projector: Redis {redis_us:.1f} us, the projector "
            f"{proj_us:.1f} us (its start-up included); so on {cores} otherwise idle cores, "
            f"Redis on them too, 1 projector can fold at most {one:,.0f} events/s and 2 at most "
            f"{two:,.0f}: a bound of {two / one:.2f}x"
        )
    if rates[1] and rates[2]:
        lines.append(
            f"  ratio 2 / 1 = {med(rates[2]) / med(rates[1]):.2f}x (from the first batch: "
            f"{med(ready[2]) / med(ready[1]):.2f}x; target >= {FOLD_TARGET}x)"
        )
        if held[1] and held[2]:
            lines.append(
                f"  ratio 2 / 1 from when every projector holds its share = "
                f"{med(held[2]) / med(held[1]):.2f}x (2 projectors from both holding, against "
                "1 from its holding every shard; the wait before is the balancing: the first "
                "to start takes every shard and gives its extra back on its next look, "
                "twice a second)"
            )
    else:
        lines.append(f"  ratio 2 / 1: none (target >= {FOLD_TARGET}x)")
    if sample and not any("differ" in line for line in notes):
        lines.append(
            f"  the views of every run match the first 1-projector run's ({len(sample):,} task "
            "views sampled)"
        )
    return lines + notes, med(ready[1]) if ready[1] else None


async def main(args: argparse.Namespace) -> None:
    binary = find_server_binary(prefer="path")
    with tempfile.TemporaryDirectory(prefix="ec-bench-") as tmp_name:
        tmp = Path(tmp_name)
        results, masters, of_partition, layouts = await no_op_part(binary, tmp, args)
        single, cluster = results.values()
        print(
            f"server: {binary.flavor} {'.'.join(map(str, binary.version))}; {os.cpu_count()} "
            f"cores shared by every process; median of {args.runs} runs"
        )
        print(
            f"no-op workload: {args.tasks:,} tasks, {PARTITIONS} partitions, one worker process "
            f"(concurrency {args.concurrency}); Redis CPU summed over the servers, from the "
            "first submit to the last end; the two alternate, run by run"
        )
        print(
            f"  {'':<20}{'tasks/s':>9}{'from ready':>12}{'Redis us/task':>15}"
            f"{'worker us/task':>16}{'events/task':>13}"
        )
        for name, ws in results.items():
            print(
                f"  {name:<20}{med([w.rate for w in ws]):>9,.0f}"
                f"{med([w.ready_rate for w in ws]):>12,.0f}"
                f"{med([w.redis_us for w in ws]):>15,.1f}{med([w.worker_us for w in ws]):>16,.1f}"
                f"{med([w.events_per_task for w in ws]):>13.1f}"
            )
        print(
            "  (tasks/s from the worker's start, and from its first sign of life; the worker's"
            " CPU after start-up)"
        )
        for name, ws in results.items():
            print(
                f"  {name} runs: {runs_of([w.rate for w in ws])} tasks/s; "
                f"{runs_of([w.redis_us for w in ws], ',.1f')} Redis us/task"
            )
        cpu_ratio = med([w.redis_us for w in cluster]) / med([w.redis_us for w in single])
        rate_ratio = med([w.rate for w in cluster]) / med([w.rate for w in single])
        print(
            f"  ratio cluster / single: Redis CPU per task {cpu_ratio:.2f}x (target <= "
            f"{CPU_TARGET}x); tasks/s {rate_ratio:.2f}x"
        )
        print()
        last = cluster[-1]
        cpu_by_master = [med([w.per_server_us[i] for w in cluster]) for i in range(len(masters))]
        for line in spread_lines(last.task_ids, masters, of_partition, cpu_by_master):
            print(line)
        shown = "; ".join(f"{count}: {'/'.join(map(str, n))}" for count, n in layouts.items())
        print(f"  event streams per master, by partition count, on these masters' slots: {shown}")
        print(flush=True)
        fold_lines, fold_rate = await fold_part(binary, tmp, args)
        for line in fold_lines:
            print(line)
        print()
        median_cluster = Workload(
            rate=med([w.rate for w in cluster]),
            ready_rate=med([w.ready_rate for w in cluster]),
            redis_us=med([w.redis_us for w in cluster]),
            per_server_us=cpu_by_master,
            worker_us=med([w.worker_us for w in cluster]),
            submit_us=med([w.submit_us for w in cluster]),
            events_per_task=med([w.events_per_task for w in cluster]),
            task_ids=[],
        )
        for line in model_lines(median_cluster, fold_rate, (3, 6, 12)):
            print(line)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=20_000, help="no-op tasks per run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=1000)
    parser.add_argument(
        "--events", type=int, default=200_000, help="events of the log the projectors fold"
    )
    parser.add_argument(
        "--lease-ms",
        type=int,
        default=None,
        help="the projectors' lease time (EVENTCORE_PROJECTOR__LEASE_MS; they balance every "
        "third of it); default: the configured one",
    )
    parser.add_argument("--sample", type=int, default=2000, help="task views compared per run")
    parser.add_argument(
        "--deadline", type=float, default=300, help="seconds a run may take before giving up"
    )
    args = _quick.parse_args(
        parser, {"tasks": 600, "runs": 1, "events": 5000, "sample": 200, "deadline": 40}
    )
    asyncio.run(main(args))
