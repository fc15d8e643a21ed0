"""SSE fan-out of `eventcore web`: how long a view change takes to reach 1,000
clients, and what the clients cost the web process in memory, with and
without stalled clients.

Processes: a fresh redis-server, `eventcore web` (one uvicorn process),
`eventcore project` and one `eventcore worker --cpu`. This process submits
no-op tasks (the worker runs them, the projector folds their events and
writes each view change to the feed) and holds the SSE clients. They are raw
asyncio sockets, not httpx: 1,000 httpx streams would keep this process busy
enough that its own lag would be counted as the server's.

What the clients watch (--watch):
  all   every client gets every view change (/v1/stream): each feed entry
        goes to all of them at once, the hardest case for the fan-out. A
        no-op task makes about 9 view changes (task, queue, node, stats).
  task  each client follows one task of its own (/v1/stream?task=ID), as a
        page showing a task's progress does; the tasks are submitted evenly
        over the phase, so every client sees its task's whole life.

Delay: a feed entry's id is the millisecond Redis appended it (the
projector's write); a client's receive time minus that, p50 / p99 over every
message every client got in the measured window. Baseline, same run: one
XREAD BLOCK reader on the feed in this process (Redis straight to a reader,
no web process in between).

1. --clients clients (default 1,000) for --seconds: delay, messages
   delivered, whether every client got everything it should; the web
   process's CPU and RSS before, with the clients connected, during, and
   after they leave.
2. the same, plus --stalled clients (default 100) watching everything that
   connect and never read: the web process should drop them (a response
   ends once a send has waited 10 s; a client 256 messages behind is cut
   off with `resync`) and keep its memory bounded, while the other clients'
   delay stays as in phase 1. Their sockets are watched too: what the kernel
   holds for them is memory no RSS shows.

Usage: python bench/sse.py [--clients N] [--stalled N] [--seconds S] [--stalled-seconds S]
                           [--watch all|task] [--rate TASKS_PER_S]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import _quick
import httpx
from redis.asyncio import Redis

from eventcore.connection import make_client
from eventcore.events import TaskSpec
from eventcore.ids import new_task_id
from eventcore.keys import Keys
from eventcore.log import EventLog
from eventcore.server.process import ServerConfig, ServerProcess, find_server_binary, free_port
from web.position import decode_position

SPEC = TaskSpec(kind="noop", queue="cpu-light")
TICKS = os.sysconf("SC_CLK_TCK")
# Stalled clients advertise an Ethernet-sized MSS and a small receive
# buffer, as a remote client would. Over loopback the MSS is 64 KB, and the
# kernel then lets the server queue about 3 MB per connection (tcp_wmem)
# before the web process itself sees a blocked send; the outcome is the
# same, minutes later.
STALLED_RCVBUF = 8192
STALLED_MSS = 1460
# An event's id line: its position over the shards' feeds (web/position.py).
EVENT_ID = re.compile(rb"^id: ?([0-9a-z.\-]+)\r?$", re.MULTILINE)


def event_ms(position: bytes) -> int:
    """When the newest feed entry a position covers was written (ms): the
    event's own entry, for an event's position."""
    return max(ms for ms, _ in decode_position(position.decode()))


# -- measuring ----------------------------------------------------------------------


@dataclass
class Window:
    """The measured span, as feed-id milliseconds (both ends included), and
    the delays of what was written in it."""

    start_ms: float = float("inf")
    end_ms: float = float("inf")
    delays: list[float] = field(default_factory=list)
    baseline: list[float] = field(default_factory=list)

    def holds(self, ms: int) -> bool:
        return self.start_ms <= ms <= self.end_ms


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else float("nan")


# -- clients ------------------------------------------------------------------------


class Client(asyncio.Protocol):
    """One SSE client: sends the request, undoes the chunked encoding, and
    notes each event's id at the moment its bytes arrive."""

    def __init__(self, task: str | None, window: Window) -> None:
        self.task = task  # the task it follows, or None for every change
        self.request = request_for(stream_path(task))
        self.window = window
        self.transport: asyncio.Transport | None = None
        self.head = bytearray()
        self.status = 0
        self.chunked = False
        self.raw = bytearray()
        self.left = 0  # bytes of the current chunk still to come
        self.skip = 0  # the CRLF after a chunk
        self.text = bytearray()
        self.received = 0  # messages whose id is in the window
        self.resyncs = 0
        self.started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if not self.started.done():
            self.started.set_exception(ConnectionError("closed before the response"))

    def data_received(self, data: bytes) -> None:
        now = time.time() * 1000
        if not self.status:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.head[:end]).lower()
            self.status = int(head.split(None, 2)[1])
            self.chunked = b"\r\ntransfer-encoding: chunked" in head
            data = bytes(self.head[end + 4 :])
            if not self.started.done():
                self.started.set_result(None)
        self._events(self._dechunk(data) if self.chunked else data, now)

    def _dechunk(self, data: bytes) -> bytes:
        raw = self.raw
        raw += data
        out = bytearray()
        while raw:
            if self.skip:
                n = min(self.skip, len(raw))
                del raw[:n]
                self.skip -= n
            elif self.left:
                n = min(self.left, len(raw))
                out += raw[:n]
                del raw[:n]
                self.left -= n
                if not self.left:
                    self.skip = 2
            else:
                i = raw.find(b"\r\n")
                if i < 0:
                    break
                self.left = int(bytes(raw[:i]).split(b";")[0], 16)
                del raw[: i + 2]
                if not self.left:  # the last chunk: the stream ended
                    raw.clear()
        return bytes(out)

    def _events(self, data: bytes, now: float) -> None:
        # Only whole events (up to the last blank line) are looked at, with
        # one regex pass rather than a Python loop per line: at 20,000
        # messages a second this process must stay light.
        text = self.text
        text += data
        end = max(text.rfind(b"\n\n"), text.rfind(b"\n\r\n"))
        if end < 0:
            return
        whole = bytes(text[: end + 1])
        del text[: end + 1]
        self.resyncs += whole.count(b"event: resync")
        window = self.window
        for ms in map(event_ms, EVENT_ID.findall(whole)):
            if window.start_ms <= ms <= window.end_ms:
                self.received += 1
                window.delays.append(now - ms)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def stream_path(task: str | None) -> str:
    return "/v1/stream" if task is None else f"/v1/stream?task={task}"


def request_for(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n".encode()


async def connect_clients(
    host: str, port: int, tasks: list[str | None], window: Window
) -> list[Client]:
    loop = asyncio.get_running_loop()
    clients: list[Client] = []
    for start in range(0, len(tasks), 100):  # in batches, as a crowd arrives
        batch = await asyncio.gather(
            *(
                loop.create_connection(lambda t=t: Client(t, window), host, port)
                for t in tasks[start : start + 100]
            )
        )
        clients += [protocol for _, protocol in batch]
    await asyncio.wait_for(asyncio.gather(*(c.started for c in clients)), 60)
    if bad := [c.status for c in clients if c.status != 200]:
        raise RuntimeError(f"{len(bad)} clients answered {sorted(set(bad))}")
    return clients


async def connect_stalled(host: str, port: int, n: int) -> list[socket.socket]:
    """Clients of every change that send the request and never read a byte."""
    loop = asyncio.get_running_loop()
    out = []
    for _ in range(n):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, STALLED_RCVBUF)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, STALLED_MSS)
        sock.setblocking(False)
        await loop.sock_connect(sock, (host, port))
        await loop.sock_sendall(sock, request_for(stream_path(None)))
        out.append(sock)
    return out


async def closed_by_server(sock: socket.socket) -> bool:
    """Read what the server queued: True if it ends in EOF (the server closed
    the connection, and only the unread bytes kept it open)."""
    loop = asyncio.get_running_loop()
    try:
        while await asyncio.wait_for(loop.sock_recv(sock, 1 << 16), 2):
            pass
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


def server_sockets(port: int, peers: set[int] | None = None) -> tuple[int, int]:
    """Established connections on ``port``, server side (from the client
    ports ``peers`` only, if given), and the bytes waiting in their kernel
    send queues: memory that is in no process's RSS."""
    n = queued = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            local, remote = (int(c.rpartition(":")[2], 16) for c in cols[1:3])
            if cols[3] == "01" and local == port and (peers is None or remote in peers):
                n += 1
                queued += int(cols[4].partition(":")[0], 16)
    return n, queued


# -- load and the baseline reader -----------------------------------------------------


async def submit_at(
    log: EventLog, rate: float, stop: asyncio.Event, task_ids: list[str] | None = None
) -> int:
    """No-op tasks at ``rate`` a second until ``stop``; with ``task_ids``, those
    tasks, in order, and then no more."""
    sent = 0
    t0 = time.perf_counter()
    while not stop.is_set() and (task_ids is None or sent < len(task_ids)):
        await log.submit(SPEC, task_id=None if task_ids is None else task_ids[sent])
        sent += 1
        await asyncio.sleep(max(0.0, t0 + sent / rate - time.perf_counter()))
    return sent


async def read_feed(redis: Redis, keys: list[str], window: Window, stop: asyncio.Event) -> None:
    """The baseline: the shards' feeds read straight from Redis, in this process."""
    positions: dict[str, bytes] = {}
    for key in keys:
        newest = await redis.xrevrange(key, count=1)
        positions[key] = newest[0][0] if newest else b"0-0"
    while not stop.is_set():
        reply = await redis.xread(positions, block=200, count=1000)
        now = time.time() * 1000
        for key, entries in reply or ():
            for entry_id, _ in entries:
                positions[key.decode()] = entry_id
                ms = int(entry_id.partition(b"-")[0])
                if window.holds(ms):
                    window.baseline.append(now - ms)


# -- the processes --------------------------------------------------------------------


def role_env(url: str, namespace: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTCORE_")}
    env.update(REDIS_URL=url, EVENTCORE_NAMESPACE=namespace)
    return env


async def start_role(env: dict[str, str], log_path: Path, *args: str) -> asyncio.subprocess.Process:
    with open(log_path, "wb") as log:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "eventcore.cli",
            *args,
            env=env,
            stdout=asyncio.subprocess.PIPE if args[0] == "web" else asyncio.subprocess.DEVNULL,
            stderr=log,
        )


async def stop_role(proc: asyncio.subprocess.Process, timeout: float = 40) -> None:
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()


@dataclass
class Web:
    proc: asyncio.subprocess.Process
    host: str
    port: int
    http: httpx.AsyncClient
    log_path: Path

    def tracebacks(self) -> int:
        """Tracebacks the web process has logged so far."""
        return self.log_path.read_text(errors="replace").count("Traceback (most recent call last)")

    @property
    def pid(self) -> int:
        assert self.proc.pid is not None
        return self.proc.pid

    async def hub_clients(self) -> int:
        return int((await self.http.get("/healthz")).json()["sse_clients"])

    async def connected_gauge(self) -> int:
        text = (await self.http.get("/metrics")).text
        m = re.search(r"^eventcore_sse_clients (\S+)$", text, re.MULTILINE)
        return int(float(m[1])) if m else -1

    async def wait_hub(self, n: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while (have := await self.hub_clients()) != n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the feed hub has {have} clients, expected {n}")
            await asyncio.sleep(0.1)


async def start_web(env: dict[str, str], log_path: Path) -> Web:
    proc = await start_role(env, log_path, "web", "--port", "0")
    assert proc.stdout is not None
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
    except TimeoutError:
        line = ""
    m = re.match(r"web: listening on http://([^:]+):(\d+)", line)
    if m is None:
        proc.kill()
        await proc.wait()
        raise RuntimeError(f"eventcore web did not start:\n{log_path.read_text()[-2000:]}")
    base = f"http://{m[1]}:{m[2]}"
    # The health and metrics reads queue behind the fan-out: on a machine too
    # busy to keep up they come late, and the delay figures say so.
    http = httpx.AsyncClient(base_url=base, timeout=60)
    return Web(proc, m[1], int(m[2]), http, log_path)


# -- phases ---------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    seconds: float = 0.0
    delays: list[float] = field(default_factory=list)
    baseline: list[float] = field(default_factory=list)
    feed_entries: int = 0
    received: list[int] = field(default_factory=list)
    expected: list[int] = field(default_factory=list)
    resyncs: int = 0
    lost: int = 0
    rss_connected: float = 0.0
    rss_max: float = 0.0
    rss_end: float = 0.0
    rss_after: float = 0.0
    web_cpu: float = 0.0
    client_cpu: float = 0.0
    # (seconds, RSS MB, clients in the hub, SSE responses open, server-side
    # sockets, bytes in their kernel send queues)
    timeline: list[tuple[float, float, int, int, int, int]] = field(default_factory=list)
    queued_max: int = 0
    stalled_open: int = 0
    stalled_queued: int = 0
    stalled_closed: int = 0
    tracebacks: int = 0


async def run_phase(
    name: str,
    web: Web,
    redis: Redis,
    log: EventLog,
    args: argparse.Namespace,
    stalled: int,
    seconds: float,
) -> Phase:
    phase = Phase(name)
    window = Window()
    tracebacks = web.tracebacks()
    if args.watch == "task":
        task_ids: list[str] | None = [new_task_id() for _ in range(args.clients)]
        # Spread over the phase, the last a second before its end.
        rate = args.clients / max(seconds - 1, 1)
    else:
        task_ids, rate = None, args.rate
    clients = await connect_clients(web.host, web.port, task_ids or [None] * args.clients, window)
    socks = await connect_stalled(web.host, web.port, stalled)
    await web.wait_hub(args.clients + stalled)
    await asyncio.sleep(1)
    phase.rss_connected = rss_mb(web.pid)

    stop = asyncio.Event()
    feeds = [log.keys.feed(shard) for shard in log.keys.view_shards()]
    reader = asyncio.create_task(read_feed(redis, feeds, window, stop))
    writer = asyncio.create_task(submit_at(log, rate, stop, task_ids))
    cpu0, own0 = cpu_seconds(web.pid), time.process_time()
    t0 = time.perf_counter()
    window.start_ms = int(time.time() * 1000) + 1  # whole milliseconds after now
    next_sample = 0.0

    async def sample(elapsed: float, rss: float) -> None:
        hub, gauge = await web.hub_clients(), await web.connected_gauge()
        phase.timeline.append((elapsed, rss, hub, gauge, *server_sockets(web.port)))

    while (elapsed := time.perf_counter() - t0) < seconds:
        rss = rss_mb(web.pid)
        phase.rss_max = max(phase.rss_max, rss)
        phase.queued_max = max(phase.queued_max, server_sockets(web.port)[1])
        if elapsed >= next_sample:
            await sample(elapsed, rss)
            next_sample += seconds / 6
        await asyncio.sleep(0.25)
    window.end_ms = int(time.time() * 1000)
    phase.seconds = time.perf_counter() - t0
    phase.web_cpu = (cpu_seconds(web.pid) - cpu0) / phase.seconds
    phase.client_cpu = (time.process_time() - own0) / phase.seconds
    phase.rss_end = rss_mb(web.pid)
    stop.set()
    await asyncio.gather(reader, writer)
    await asyncio.sleep(2)  # what is in flight arrives; it counts if written in the window
    await sample(phase.seconds, phase.rss_end)
    phase.tracebacks = web.tracebacks() - tracebacks
    rows = [
        row
        for key in feeds
        for row in await redis.xrange(key, str(window.start_ms), str(window.end_ms))
    ]
    phase.feed_entries = len(rows)
    per_task = Counter(f[b"id"].decode() for _, f in rows if f.get(b"entity") == b"task")
    phase.delays, phase.baseline = window.delays, window.baseline
    phase.received = [c.received for c in clients]
    phase.expected = [len(rows) if c.task is None else per_task[c.task] for c in clients]
    phase.resyncs = sum(c.resyncs for c in clients)
    phase.lost = sum(c.lost for c in clients)
    if stalled:
        peers = {s.getsockname()[1] for s in socks}
        phase.stalled_open, phase.stalled_queued = server_sockets(web.port, peers)
        phase.stalled_closed = sum(await asyncio.gather(*map(closed_by_server, socks)))

    for c in clients:
        c.close()
    for s in socks:
        s.close()
    await web.wait_hub(0)
    await asyncio.sleep(3)
    phase.rss_after = rss_mb(web.pid)
    return phase


# -- main -----------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> None:
    load_before = os.getloadavg()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.clients + args.stalled + 200
    if soft < want:  # the web process inherits it
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(want, soft), hard), hard))
    binary = find_server_binary(prefer="path")
    namespace = "b" + uuid.uuid4().hex[:10]
    node = f"bench-{namespace}"
    with tempfile.TemporaryDirectory(prefix="ec-bench-") as tmp:
        server = ServerProcess(binary, ServerConfig(Path(tmp), port=free_port()))
        url = server.start()
        redis = make_client(url)
        log = EventLog(redis, Keys(namespace))
        env = role_env(url, namespace)
        roles = []
        web = None
        try:
            web = await start_web(env, Path(tmp) / "web.log")
            roles.append(web.proc)
            roles.append(await start_role(env, Path(tmp) / "projector.log", "project"))
            roles.append(
                await start_role(
                    env,
                    Path(tmp) / "worker.log",
                    *("worker", "--cpu", "--queues", "cpu-light", "--concurrency", "4"),
                    *("--node", node),
                )
            )
            deadline = time.monotonic() + 60
            while not await redis.hexists(log.keys.nodes_seen(), node):
                if time.monotonic() > deadline or roles[-1].returncode is not None:
                    raise RuntimeError((Path(tmp) / "worker.log").read_text()[-2000:])
                await asyncio.sleep(0.1)
            await web.http.get("/healthz")
            await asyncio.sleep(1)
            rss_before = rss_mb(web.pid)
            plain = await run_phase("live clients", web, redis, log, args, 0, args.seconds)
            stalled = await run_phase(
                f"the same + {args.stalled} stalled clients",
                web,
                redis,
                log,
                args,
                args.stalled,
                args.stalled_seconds,
            )
        finally:
            if web is not None:
                await web.http.aclose()
            for proc in reversed(roles):
                await stop_role(proc)
            await redis.aclose()
            server.stop()

    load = ", ".join(f"{x:.1f}" for x in load_before)
    print(
        f"server: {binary.flavor} {'.'.join(map(str, binary.version))}; one web process; "
        f"{os.cpu_count()} cores shared by Redis, web, projector, worker and the clients"
    )
    print(f"  load average before the run: {load} (other work on the machine shows here)")
    if args.watch == "task":
        what = (
            f"{args.clients} SSE clients, each on /v1/stream?task=<its own task>, "
            f"{args.clients} no-op tasks spread over each phase"
        )
    else:
        what = (
            f"{args.clients} SSE clients on /v1/stream (every change), {args.rate:g} no-op tasks/s"
        )
    print(
        f"  {what}, run by a worker and folded by the projector; "
        f"phases of {args.seconds:g} s and {args.stalled_seconds:g} s"
    )
    print(f"  web RSS before any client: {rss_before:.1f} MB")
    for phase in (plain, stalled):
        report(phase, args)


def report(phase: Phase, args: argparse.Namespace) -> None:
    n = args.clients
    got = phase.received
    delivered = sum(got)
    print(f"\n  {phase.name}:")
    print(
        f"    delay view change -> client   p50 {statistics.median(phase.delays):6.1f} ms"
        f"   p99 {pct(phase.delays, 99):6.1f} ms   max {max(phase.delays):6.1f} ms"
        f"   ({delivered:,} messages, {delivered / phase.seconds:,.0f}/s)"
    )
    print(
        f"    baseline: feed read from Redis p50 {statistics.median(phase.baseline):6.1f} ms"
        f"   p99 {pct(phase.baseline, 99):6.1f} ms   ({len(phase.baseline):,} entries)"
    )
    print(
        f"    ratio p99 clients / baseline = "
        f"{pct(phase.delays, 99) / max(pct(phase.baseline, 99), 1):.1f}"
    )
    every = sum(g == e for g, e in zip(got, phase.expected))
    short = [e - g for g, e in zip(got, phase.expected) if g != e]
    print(
        f"    feed entries in the window: {phase.feed_entries:,} "
        f"({phase.feed_entries / phase.seconds:.1f}/s); clients that got all theirs: "
        f"{every}/{n}"
        + (f" (most missed by one: {max(short):,})" if short else "")
        + f"; resync events {phase.resyncs}, connections lost {phase.lost}"
    )
    # Per message only when messages are most of the work (not --watch task).
    per_message = phase.web_cpu * phase.seconds / max(delivered, 1) * 1e6
    cost = f" ({per_message:.0f} us CPU per message delivered)" if args.watch == "all" else ""
    print(
        f"    web process: {phase.web_cpu:.0%} of a core{cost}; RSS with clients connected "
        f"{phase.rss_connected:.1f} MB, max during {phase.rss_max:.1f} MB, "
        f"at the end {phase.rss_end:.1f} MB, 3 s after they left {phase.rss_after:.1f} MB"
    )
    print(
        f"    clients (this process): {phase.client_cpu:.0%} of a core; "
        f"tracebacks in the web process's log: {phase.tracebacks}"
    )
    print(f"    server-side kernel send queues: max {phase.queued_max / 2**20:.1f} MB in all")
    if phase.stalled_closed or phase.name.endswith("stalled clients"):
        print("    over time (s: RSS, in the hub / SSE responses open / sockets, send queues):")
        for t, rss, hub, gauge, socks, queued in phase.timeline:
            print(
                f"      {t:4.0f}: {rss:6.1f} MB, {hub} / {gauge} / {socks}, {queued / 2**20:.1f} MB"
            )
        *_, hub, gauge, _, _ = phase.timeline[-1]
        print(
            f"    stalled clients: {n + args.stalled - hub} of {args.stalled} dropped from the "
            f"hub, {n + args.stalled - gauge} SSE responses ended; at the end "
            f"{phase.stalled_open} of their sockets still open on the server side holding "
            f"{phase.stalled_queued / 2**20:.1f} MB of send queue; "
            f"{phase.stalled_closed} ended in EOF once the client read them"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--stalled", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=30.0, help="length of phase 1")
    parser.add_argument(
        "--stalled-seconds",
        type=float,
        default=60.0,
        help="length of phase 2 (stalled clients are dropped after 30 to 50 s at the default rate)",
    )
    parser.add_argument(
        "--watch", choices=["all", "task"], default="all", help="what each client follows"
    )
    parser.add_argument(
        "--rate", type=float, default=2.0, help="with --watch all: tasks submitted per second"
    )
    quick = {"clients": 50, "stalled": 5, "seconds": 2.0, "stalled_seconds": 2.0}
    asyncio.run(main(_quick.parse_args(parser, quick)))
