"""inpaint and upscale as tasks: blobs in, PNG blob out, through a real worker."""

from __future__ import annotations

from pathlib import Path

import cv2
import msgspec
import numpy as np
import pytest
import torch

from eventcore.blobs import RedisBlobStore
from eventcore.events import TaskSpec
from eventcore.keys import Keys
from eventcore.log import EventLog
from tests.workerkit import fast_settings, running, wait_ended
from workers.handlers import Registry
from workers.resources import ResourceConfig
from workers.worker import Worker, WorkerOptions


def scene(w: int = 160, h: int = 120) -> tuple[np.ndarray, np.ndarray]:
    """A gradient with shapes and text (RGB), and a mask over part of it."""
    x = np.linspace(0, 255, w, dtype=np.uint8)
    img = np.dstack([np.tile(x, (h, 1)), np.tile(x[::-1], (h, 1)), np.full((h, w), 90, np.uint8)])
    cv2.circle(img, (w // 3, h // 2), h // 4, (250, 40, 40), -1)
    cv2.putText(img, "eventcore", (5, h - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 2)
    mask = np.zeros((h, w), np.uint8)
    cv2.rectangle(mask, (w // 3 - 15, h // 2 - 15), (w // 3 + 15, h // 2 + 15), 255, -1)
    return img, mask


def png(arr: np.ndarray) -> bytes:
    bgr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR) if arr.ndim == 3 else arr
    return cv2.imencode(".png", bgr)[1].tobytes()


def unpng(data: bytes) -> np.ndarray:
    return cv2.cvtColor(
        cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB
    )


@pytest.fixture
def setup(r, redis_url: str, namespace: str, tmp_path: Path):
    models = tmp_path / "models"
    models.mkdir()

    class Gray(torch.nn.Module):  # the LaMa signature: (image, mask) -> image
        def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return image * (1 - mask) + mask * 0.5

    torch.jit.script(Gray()).save(str(models / "gray.pt"))
    settings = fast_settings(namespace)
    settings = msgspec.structs.replace(
        settings,
        models=msgspec.structs.replace(
            settings.models, root=str(models), files={"gray": "gray.pt"}
        ),
    )
    log = EventLog(r, Keys(namespace))
    options = WorkerOptions(
        node="img",
        queues=settings.queues,
        concurrency=2,
        capabilities=msgspec.convert(
            {"cpu_cores": 2, "memory_mb": 1024}, type=__import__("eventcore").events.Capabilities
        ),
        resources=ResourceConfig.from_settings(settings, redis_url),
        block_ms=200,
    )
    worker = Worker(log, settings, options, Registry())
    blobs = RedisBlobStore(r, log.keys, ttl=600, max_bytes=10_000_000)
    return log, worker, blobs


@pytest.mark.parametrize("flag", ["INPAINT_NS", "INPAINT_TELEA"])
async def test_cv2_inpaint_task_equals_direct_cv2(setup, flag: str) -> None:
    log, worker, blobs = setup
    img, mask = scene()
    image_ref = (await blobs.put(png(img))).ref
    mask_ref = (await blobs.put(png(mask))).ref
    async with running(worker):
        res = await log.submit(
            TaskSpec(
                kind="inpaint",
                queue="q",
                params={
                    "image": image_ref,
                    "mask": mask_ref,
                    "cv2_flag": flag,
                    "cv2_radius": 5,
                    "hd_strategy": "Original",
                    "prompt": "ignored, as IOPaint ignores it",
                },
            )
        )
        assert await wait_ended(log, res.task_id, timeout=30) == "task.succeeded"
    done = (await log.history(res.task_id))[-1].event
    assert done.result_ref == done.result["blob"] and done.result["width"] == 160
    out = unpng(await blobs.get(done.result_ref))
    expected = cv2.inpaint(img, mask, 5, getattr(cv2, flag))
    assert np.array_equal(out, expected)
    progress = [
        e.event.message
        for e in await log.history(res.task_id)
        if e.event.type_name() == "task.progress"
    ]
    assert progress  # decode / model / encode steps were reported


async def test_torchscript_model_by_name_and_warm(setup) -> None:
    log, worker, blobs = setup
    img, mask = scene(64, 48)
    refs = [(await blobs.put(png(a))).ref for a in (img, mask)]
    async with running(worker):
        res = await log.submit(
            TaskSpec(
                kind="inpaint", queue="q", model="gray", params={"image": refs[0], "mask": refs[1]}
            )
        )
        assert await wait_ended(log, res.task_id, timeout=60) == "task.succeeded"
        assert "gray" in worker.pool.warm_models()
    out = unpng(await blobs.get((await log.history(res.task_id))[-1].event.result_ref))
    assert np.array_equal(out[mask == 0], img[mask == 0])
    assert np.all(np.abs(out[mask > 0].astype(int) - 128) <= 1)


async def test_upscale_task(setup) -> None:
    log, worker, blobs = setup
    img, _ = scene(40, 30)
    ref = (await blobs.put(png(img))).ref
    async with running(worker):
        res = await log.submit(
            TaskSpec(kind="upscale", queue="q", params={"image": ref, "scale": 2})
        )
        assert await wait_ended(log, res.task_id, timeout=60) == "task.succeeded"
    result = (await log.history(res.task_id))[-1].event.result
    assert (result["width"], result["height"]) == (80, 60)


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"image": "sha256:" + "0" * 64, "mask": "sha256:" + "1" * 64}, "does not exist"),
        ({"image": "not-a-ref", "mask": "x"}, "param 'image'"),
        ({"mask": "x"}, "param 'image'"),
    ],
)
async def test_bad_inputs_fail_without_retry(setup, params: dict, words: str) -> None:
    log, worker, _ = setup
    async with running(worker):
        res = await log.submit(TaskSpec(kind="inpaint", queue="q", params=params))
        assert await wait_ended(log, res.task_id, timeout=30) == "task.failed"
    failed = (await log.history(res.task_id))[-1].event
    assert words in failed.error.message and not failed.error.retryable


async def test_mismatched_mask_and_unknown_flag(setup) -> None:
    log, worker, blobs = setup
    img, _ = scene()
    image_ref = (await blobs.put(png(img))).ref
    small = (await blobs.put(png(np.zeros((10, 10), np.uint8)))).ref
    async with running(worker):
        a = await log.submit(
            TaskSpec(kind="inpaint", queue="q", params={"image": image_ref, "mask": small})
        )
        b = await log.submit(
            TaskSpec(
                kind="inpaint",
                queue="q",
                params={"image": image_ref, "mask": small, "cv2_flag": "INPAINT_MAGIC"},
            )
        )
        assert await wait_ended(log, a.task_id, timeout=30) == "task.failed"
        assert await wait_ended(log, b.task_id, timeout=30) == "task.failed"
    assert "mask" in (await log.history(a.task_id))[-1].event.error.message
    assert "INPAINT_MAGIC" in (await log.history(b.task_id))[-1].event.error.message
