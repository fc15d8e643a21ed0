"""Other Redis task queues on eventcore's two worker workloads, one server, one run.

Peers: Celery, Dramatiq, RQ, arq, saq, streaq, taskiq (taskiq-redis), huey.
One redis-server is started here (free port, AOF off) and shared; between
measurements it is flushed. Each task does one Redis command, the same for
every peer: INCR a counter (throughput) or LPUSH a key of its own (latency).

1. throughput: N no-op tasks enqueued up front (the library's bulk enqueue if it
   has one), then ONE worker of that library started; tasks/s from the worker's
   start until the counter reaches N. Median of --runs runs.
2. latency: an idle worker (warmed up with 5 tasks); --latency-tasks tasks one
   at a time, each --gap-ms after the last finished; submit -> BLPOP of the key
   it pushed. p50 / p99 in ms; median over --latency-runs runs.

Runs are interleaved across peers so the machine's noise hits all alike. Each
measurement runs bench/peers/harness.py in a subprocess, with the Python given
by --python PEER=PATH (default: this one): arq pins redis<6, which cannot share
a venv with the project, so it usually runs from a venv of its own. A peer that
cannot be imported, or fails, is reported as skipped and the rest go on.

--eventcore also measures eventcore through bench/throughput.py's throughput()
and latency() when that file is importable (its latency is submit -> terminal
event by XREAD, not BLPOP).

--quick runs every peer installed here (arq only with --python arq=PATH) and
eventcore at tiny sizes, and exits non-zero when any of them fails.

Usage: python bench/peers.py [--tasks N] [--runs R] [--latency-runs R]
       [--peers celery,arq,...] [--python arq=/venv/bin/python] [--concurrency huey=4]
       [--eventcore] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import inspect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

import _quick
import redis
import redis.asyncio

from eventcore.server.process import ServerConfig, ServerProcess, find_server_binary, free_port

BENCH = Path(__file__).resolve().parent
HARNESS = BENCH / "peers" / "harness.py"
PEERS = ("celery", "dramatiq", "rq", "arq", "saq", "streaq", "taskiq", "huey")
CONCURRENCY_ENV = "BENCH_CONCURRENCY"  # read by bench/peers/kit.py
# On top of a measurement's own bound: interpreter start-up, imports, enqueueing.
HARNESS_SLACK = 180.0
# Appended to an import failure: how to get the peer measured after all.
HINTS = {"arq": "arq pins redis<6; install it in a venv of its own and pass --python arq=PATH"}


@dataclass
class Result:
    """Everything measured for one peer (or eventcore), across runs."""

    name: str
    version: str = ""
    worker: str = ""
    rates: list[float] = field(default_factory=list)
    first_s: list[float] = field(default_factory=list)
    enqueue_rates: list[float] = field(default_factory=list)
    p50s: list[float] = field(default_factory=list)
    p99s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    failed: set[str] = field(default_factory=set)  # modes not to run again
    skipped: str | None = None  # cannot be imported or run at all

    @property
    def rate(self) -> float | None:
        return statistics.median(self.rates) if self.rates else None

    @property
    def p50(self) -> float | None:
        return statistics.median(self.p50s) if self.p50s else None

    @property
    def p99(self) -> float | None:
        return statistics.median(self.p99s) if self.p99s else None

    def wants(self, mode: str) -> bool:
        return self.skipped is None and mode not in self.failed

    def add(self, mode: str, got: dict[str, Any]) -> None:
        """Fold one answer in. A failed mode is not run again: a peer that timed out
        once would only spend the same bound again."""
        if "error" in got:
            if got.get("kind") == "import":
                hint = HINTS.get(self.name)
                self.skipped = got["error"] + (f" ({hint})" if hint else "")
            else:
                self.failed.add(mode)
                self.errors.append(f"{mode} failed: {got['error']}")
            return
        ok = got["ok"]
        self.version = ok.get("version", self.version)
        self.worker = ok.get("worker", self.worker)
        if mode == "throughput":
            self.rates.append(ok["rate"])
            if "first_s" in ok:
                self.first_s.append(ok["first_s"])
            if "enqueue_rate" in ok:
                self.enqueue_rates.append(ok["enqueue_rate"])
            if ok.get("extra_runs"):
                self.errors.append(f"counter passed N by {ok['extra_runs']}: tasks ran twice")
        else:
            p50, p99 = percentiles(ok["samples_ms"])
            self.p50s.append(p50)
            self.p99s.append(p99)

    @property
    def skip_reason(self) -> str | None:
        """Why the row has no figures at all, if it has none."""
        if self.skipped:
            return self.skipped
        if not (self.rates or self.p50s):
            return "; ".join(self.errors) or "not measured"
        return None


def percentiles(samples: list[float]) -> tuple[float, float]:
    """p50 and p99, as bench/throughput.py computes them."""
    return statistics.median(samples), statistics.quantiles(samples, n=100)[98]


def parse_pairs(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        for pair in item.split(","):
            name, sep, value = pair.partition("=")
            if not sep or name not in PEERS:
                raise SystemExit(f"--{what} takes PEER=VALUE with PEER one of {', '.join(PEERS)}")
            out[name] = value
    return out


def run_harness(
    peer: str, mode: str, args: argparse.Namespace, url: str, python: str, log: Path
) -> dict[str, Any]:
    """One measurement in a subprocess; its JSON answer, or {"error": ...}. Bounded."""
    argv = [
        python,
        str(HARNESS),
        peer,
        mode,
        "--url",
        url,
        "--tasks",
        str(args.tasks),
        "--latency-tasks",
        str(args.latency_tasks),
        "--timeout",
        str(args.timeout),
        "--gap",
        str(args.gap_ms / 1000),
        "--log",
        str(log),
    ]
    env = dict(os.environ)
    env.pop(CONCURRENCY_ENV, None)
    if peer in args.concurrency:
        env[CONCURRENCY_ENV] = args.concurrency[peer]
    bound = args.timeout + HARNESS_SLACK
    try:
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
    except OSError as exc:
        return {"error": f"cannot run {python}: {exc}", "kind": "import"}
    try:
        out, err = proc.communicate(timeout=bound)
    except subprocess.TimeoutExpired:
        # SIGTERM first: the harness unwinds and stops its worker, then we're sure.
        proc.terminate()
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        return {"error": f"harness did not finish within {bound:g} s"}
    except KeyboardInterrupt:
        # The harness got the Ctrl-C too; give it time to stop its worker.
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
    lines = out.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        tail = err.strip().splitlines()[-1:] or ["no output"]
        return {"error": f"harness exited with code {proc.returncode}: {tail[0][:300]}"}


def load_eventcore_bench() -> ModuleType:
    """bench/throughput.py, if it is there and has throughput(redis, url, n, concurrency)
    and latency(redis, url, n). Raises RuntimeError saying why not."""
    path = BENCH / "throughput.py"
    if not path.exists():
        raise RuntimeError("bench/throughput.py not found")
    spec = importlib.util.spec_from_file_location("_eventcore_throughput_bench", path)
    if spec is None or spec.loader is None:
        raise RuntimeError("bench/throughput.py cannot be loaded")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # someone is still writing it: any failure means skip
        raise RuntimeError(f"bench/throughput.py: {type(exc).__name__}: {exc}") from exc
    for name, arity in (("throughput", 4), ("latency", 3)):
        fn = getattr(module, name, None)
        if not inspect.iscoroutinefunction(fn) or len(inspect.signature(fn).parameters) < arity:
            raise RuntimeError(
                f"bench/throughput.py has no async {name}() taking {arity} arguments"
            )
    return module


def run_eventcore(
    module: ModuleType, mode: str, args: argparse.Namespace, url: str
) -> dict[str, Any]:
    """One eventcore measurement through bench/throughput.py, shaped like a harness answer."""

    async def once() -> dict[str, Any]:
        client = redis.asyncio.Redis.from_url(url)
        try:
            if mode == "throughput":
                got = await asyncio.wait_for(
                    module.throughput(client, url, args.tasks, args.eventcore_concurrency),
                    args.timeout,
                )
                # (from worker start, from worker ready) today; a bare rate is fine too.
                rate = got[0] if isinstance(got, tuple) else got
                return {"rate": float(rate)}
            samples = await asyncio.wait_for(
                module.latency(client, url, args.latency_tasks), args.timeout
            )
            return {"samples_ms": [float(x) for x in samples]}
        finally:
            await client.aclose()

    try:
        ok = asyncio.run(once())
    except TimeoutError:
        return {"error": f"timed out after {args.timeout:g} s"}
    except Exception as exc:  # its failure is reported, the peers' figures still print
        return {"error": f"{type(exc).__name__}: {exc}"}
    try:
        version = f"eventcore {metadata.version('eventcore')}, redis {metadata.version('redis')}"
    except metadata.PackageNotFoundError:
        version = "eventcore"
    # Not quite like for like: a peer's task makes one Redis call (INCR/LPUSH),
    # eventcore's "noop" none; completion is read from its own terminal state.
    worker = (
        f"`eventcore worker`, concurrency {args.eventcore_concurrency} (bench/throughput.py); "
        "its no-op makes no Redis call; latency by XREAD of the terminal event"
    )
    return {"ok": ok | {"version": version, "worker": worker}}


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def report(results: list[Result], eventcore: Result | None) -> None:
    rows = results + ([eventcore] if eventcore else [])
    print()
    print("details:")
    for r in rows:
        if r.skip_reason:
            print(f"  {r.name}: skipped: {r.skip_reason}")
            continue
        bits = [r.version, r.worker]
        if r.rates:
            bits.append(f"throughput runs {', '.join(f'{x:,.0f}' for x in r.rates)} /s")
        if r.first_s:
            bits.append(f"first task done {statistics.median(r.first_s):.2f} s after start")
        if r.enqueue_rates:
            bits.append(f"enqueue {statistics.median(r.enqueue_rates):,.0f} /s")
        print(f"  {r.name}: " + "; ".join(b for b in bits if b))
    print()
    print(f"  {'peer':<10} {'tasks/s':>9} {'p50 ms':>8} {'p99 ms':>8}   notes")
    for r in rows:
        if r.skip_reason:
            print(f"  {r.name:<10} {'-':>9} {'-':>8} {'-':>8}   skipped: {r.skip_reason}")
            continue
        notes = "; ".join([r.worker, *r.errors])
        print(
            f"  {r.name:<10} {fmt(r.rate, ',.0f'):>9} {fmt(r.p50, '.2f'):>8} "
            f"{fmt(r.p99, '.2f'):>8}   {notes}"
        )
    print()
    best: dict[str, Result] = {}
    for metric, pick in (("rate", max), ("p50", min), ("p99", min)):
        scored = [r for r in results if getattr(r, metric) is not None]
        if scored:
            best[metric] = pick(scored, key=lambda r: getattr(r, metric))

    def shown(r: Result, metric: str) -> str:
        value = getattr(r, metric)
        return f"{value:,.0f} tasks/s" if metric == "rate" else f"{value:.2f} ms"

    if eventcore is not None and not eventcore.skip_reason:
        parts = []
        for metric in ("rate", "p50", "p99"):
            if getattr(eventcore, metric) is not None and metric in best:
                parts.append(f"{shown(eventcore, metric)} vs {shown(best[metric], metric)}")
        print("eventcore vs best peer: " + "; ".join(parts))
    labels = {"rate": "throughput", "p50": "p50", "p99": "p99"}
    print(
        "best peer: "
        + "; ".join(
            f"{labels[m]} {best[m].name} ({shown(best[m], m)})" if m in best else f"{labels[m]} -"
            for m in labels
        )
    )


def broken(results: list[Result], eventcore: Result | None, args: argparse.Namespace) -> list[str]:
    """What failed, for --quick. A peer may be missing only if it needs a venv of
    its own (arq) and none was given."""
    out = []
    for r in results + ([eventcore] if eventcore else []):
        if r.failed:
            out.append(f"{r.name}: {'; '.join(r.errors)}")
        elif r.skipped and (r.name not in HINTS or r.name in args.python):
            out.append(f"{r.name}: skipped: {r.skipped}")
    return out


def measure(args: argparse.Namespace, url: str, logs: Path) -> tuple[list[Result], Result | None]:
    results = [Result(name) for name in args.peers]
    eventcore: Result | None = None
    module: ModuleType | None = None
    if args.eventcore:
        eventcore = Result("eventcore")
        try:
            module = load_eventcore_bench()
        except RuntimeError as exc:
            eventcore.skipped = str(exc)
    flush = redis.Redis.from_url(url)
    try:
        for run in range(max(args.runs, args.latency_runs)):
            modes = [
                m for m, n in (("throughput", args.runs), ("latency", args.latency_runs)) if run < n
            ]
            for r in results + ([eventcore] if module and eventcore else []):
                for mode in modes:
                    if not r.wants(mode):
                        continue
                    t = time.perf_counter()
                    if r.name == "eventcore":
                        got = run_eventcore(module, mode, args, url)  # type: ignore[arg-type]
                    else:
                        python = args.python.get(r.name, sys.executable)
                        log = logs / f"{r.name}-{mode}-{run + 1}.log"
                        got = run_harness(r.name, mode, args, url, python, log)
                    flush.flushdb()
                    r.add(mode, got)
                    progress(r, mode, run, got, time.perf_counter() - t)
    finally:
        flush.close()
    return results, eventcore


def progress(r: Result, mode: str, run: int, got: dict[str, Any], took: float) -> None:
    if "error" in got:
        what = f"error: {got['error']}"
    elif mode == "throughput":
        what = f"{got['ok']['rate']:,.0f} tasks/s"
    else:
        p50, p99 = percentiles(got["ok"]["samples_ms"])
        what = f"p50 {p50:.2f} ms, p99 {p99:.2f} ms"
    print(f"  run {run + 1} {r.name} {mode}: {what} ({took:.0f} s)", file=sys.stderr, flush=True)


def main(args: argparse.Namespace) -> None:
    binary = find_server_binary(prefer="path")
    with tempfile.TemporaryDirectory(prefix="ec-peers-") as tmp:
        logs = Path(args.logs or tmp)
        logs.mkdir(parents=True, exist_ok=True)
        server = ServerProcess(binary, ServerConfig(Path(tmp), port=free_port()))
        url = server.start()
        try:
            where = logs if args.logs else "a temporary dir (--logs DIR keeps them)"
            print(f"{url}; worker logs in {where}", file=sys.stderr, flush=True)
            results, eventcore = measure(args, url, logs)
        finally:
            server.stop()
    print(
        f"server: {binary.flavor} {'.'.join(map(str, binary.version))}, AOF off; "
        f"{os.cpu_count()} cores"
    )
    print(
        f"throughput: {args.tasks:,} no-op tasks enqueued, then one worker started; "
        f"clock from worker start to the last task; median of {args.runs} runs"
    )
    print(
        f"latency: idle worker, {args.latency_tasks} tasks one at a time, {args.gap_ms:g} ms "
        f"apart; submit -> BLPOP of the key the task pushed; median of {args.latency_runs} run(s)"
    )
    report(results, eventcore)
    if args.quick and (failures := broken(results, eventcore, args)):
        raise SystemExit("--quick: failed:\n  " + "\n  ".join(failures))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3, help="throughput runs (median)")
    parser.add_argument("--latency-runs", type=int, default=1)
    parser.add_argument("--latency-tasks", type=int, default=200)
    parser.add_argument("--gap-ms", type=float, default=20.0, help="pause between latency tasks")
    parser.add_argument("--peers", default=",".join(PEERS), help="comma-separated subset")
    parser.add_argument("--python", action="append", default=[], metavar="PEER=PATH")
    parser.add_argument("--concurrency", action="append", default=[], metavar="PEER=N")
    parser.add_argument("--timeout", type=float, default=300.0, help="bound per measurement, s")
    parser.add_argument("--logs", help="keep worker logs in this directory")
    parser.add_argument("--eventcore", action="store_true", help="also measure eventcore")
    parser.add_argument("--eventcore-concurrency", type=int, default=1000)
    # Starting each peer's worker is most of a quick run; the sizes only need
    # to be big enough that every phase does some work.
    quick = {
        "tasks": 50,
        "runs": 1,
        "latency_runs": 1,
        "latency_tasks": 10,
        "gap_ms": 5.0,
        "timeout": 60.0,
        "eventcore": True,
    }
    ns = _quick.parse_args(parser, quick)
    ns.peers = [p.strip() for p in ns.peers.split(",") if p.strip()]
    unknown = sorted(set(ns.peers) - set(PEERS))
    if unknown:
        parser.error(f"unknown peers {', '.join(unknown)}; known: {', '.join(PEERS)}")
    ns.python = parse_pairs(ns.python, "python")
    ns.concurrency = parse_pairs(ns.concurrency, "concurrency")
    main(ns)
