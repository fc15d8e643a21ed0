"""512x512 cv2 inpaint: tasks/s through the whole system next to the bare handler.

whole system: N inpaint tasks submitted at once (image and mask as blobs), one
worker process (`eventcore worker`), time until all are terminal: claim,
child process, blob fetch, decode, cv2.inpaint, PNG encode, blob store,
settle. Measured with concurrency 1 (same work as the loop, plus every
framework cost) and 2 (this machine's cores).
direct: the same handler function called in a loop in this process, with
the same blob store: the ceiling for one core.

Usage: python bench/images.py [--tasks N] [--runs R] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path

# Run as a script, this folder is on sys.path: _quick and throughput are bench/'s.
import _quick
import numpy as np
import redis as sync_redis
from throughput import start_worker, wait_started

from eventcore.blobs import RedisBlobStore, SyncRedisBlobStore
from eventcore.connection import make_client
from eventcore.events import TaskSpec
from eventcore.keys import Keys
from eventcore.log import EventLog, Submission
from eventcore.server.process import ServerConfig, ServerProcess, find_server_binary, free_port
from workers.context import TaskContext
from workers.handlers.image_tasks import inpaint_task

SIZE = 512


def scene() -> tuple[bytes, bytes]:
    # workers.images sets OpenCV's pixel cap, which must come before cv2 loads.
    import workers.images  # noqa: F401, I001
    import cv2

    x = np.linspace(0, 255, SIZE, dtype=np.uint8)
    img = np.dstack(
        [np.tile(x, (SIZE, 1)), np.tile(x[::-1], (SIZE, 1)), np.full((SIZE, SIZE), 90, np.uint8)]
    )
    cv2.circle(img, (200, 260), 90, (250, 40, 40), -1)
    cv2.putText(img, "eventcore", (20, 480), cv2.FONT_HERSHEY_SIMPLEX, 2, (0, 0, 0), 4)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    cv2.rectangle(mask, (150, 200), (260, 320), 255, -1)
    cv2.line(mask, (30, 40), (480, 90), 255, 9)
    enc = [cv2.imencode(".png", a)[1].tobytes() for a in (img[:, :, ::-1], mask)]
    return enc[0], enc[1]


class Blobs:
    """Just what the handler uses of its resources."""

    def __init__(self, store: SyncRedisBlobStore) -> None:
        self.blobs = store


def direct(url: str, namespace: str, refs: tuple[str, str], n: int) -> float:
    client = sync_redis.Redis.from_url(url)
    res = Blobs(SyncRedisBlobStore(client, Keys(namespace), ttl=600, max_bytes=1 << 26))
    params = {"image": refs[0], "mask": refs[1], "hd_strategy": "Original"}
    t0 = time.perf_counter()
    for _ in range(n):
        inpaint_task.fn(TaskContext(task_id="t", kind="inpaint", params=params, resources=res))
    rate = n / (time.perf_counter() - t0)
    client.close()
    return rate


async def system(url: str, refs: tuple[str, str], n: int, concurrency: int, ns: str) -> float:
    redis = make_client(url)
    keys = Keys(ns)
    log = EventLog(redis, keys)
    params = {"image": refs[0], "mask": refs[1], "hd_strategy": "Original"}
    spec = TaskSpec(kind="inpaint", queue="cpu-light", params=params)
    worker = start_worker(url, ns, concurrency)
    try:
        await wait_started(redis, keys, f"bench-{ns}")
        # warm the children (fork server, cv2 import) before timing
        warm = await log.submit_many([Submission(spec=spec)] * concurrency)
        while await redis.hlen(keys.done(0)) < len(warm):
            await asyncio.sleep(0.005)
        t0 = time.perf_counter()
        await log.submit_many([Submission(spec=spec)] * n)
        while await redis.hlen(keys.done(0)) < n + len(warm):
            await asyncio.sleep(0.005)
        return n / (time.perf_counter() - t0)
    finally:
        worker.terminate()
        worker.wait(30)
        await redis.aclose()


async def main(n: int, runs: int) -> None:
    binary = find_server_binary(prefer="path")
    with tempfile.TemporaryDirectory(prefix="ec-bench-") as tmp:
        server = ServerProcess(binary, ServerConfig(Path(tmp), port=free_port()))
        url = server.start()
        try:
            redis = make_client(url)
            rates: dict[str, list[float]] = {"direct": [], "system c=1": [], "system c=2": []}
            for _ in range(runs):
                ns = "i" + uuid.uuid4().hex[:8]
                store = RedisBlobStore(redis, Keys(ns), ttl=600, max_bytes=1 << 26)
                image, mask = scene()
                refs = ((await store.put(image)).ref, (await store.put(mask)).ref)
                rates["direct"].append(await asyncio.to_thread(direct, url, ns, refs, n))
                rates["system c=1"].append(await system(url, refs, n, 1, ns))
                ns2 = "i" + uuid.uuid4().hex[:8]
                store2 = RedisBlobStore(redis, Keys(ns2), ttl=600, max_bytes=1 << 26)
                refs2 = ((await store2.put(image)).ref, (await store2.put(mask)).ref)
                rates["system c=2"].append(await system(url, refs2, n, 2, ns2))
            await redis.aclose()
        finally:
            server.stop()
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(
        f"{SIZE}x{SIZE} cv2 inpaint (INPAINT_NS, radius 4, hd_strategy Original), "
        f"{n} tasks per run, median of {runs} runs"
    )
    for name, value in med.items():
        runs_text = ", ".join(f"{x:.1f}" for x in rates[name])
        print(f"  {name:<12} {value:>7.1f} tasks/s   (runs: {runs_text})")
    print(
        f"  ratio system/direct: concurrency 1 = {med['system c=1'] / med['direct']:.2f}, "
        f"concurrency 2 = {med['system c=2'] / med['direct']:.2f}   (target >= 0.95)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    args = _quick.parse_args(parser, {"tasks": 6, "runs": 1})
    asyncio.run(main(args.tasks, args.runs))
