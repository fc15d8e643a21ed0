"""The IOPaint-compatible routes in process, against a real redis-server and a
real worker running the built-in inpaint and upscale handlers: results equal
a direct call of the image code, IOPaint's request and response shapes, and
the errors bad input gets."""

from __future__ import annotations

import base64
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import cv2
import httpx
import msgspec
import numpy as np
import pytest
import torch

from eventcore.config import Settings, WebSettings
from eventcore.events import Capabilities, NodeStarted
from eventcore.log import EventLog
from eventcore.nodes import append_node_event
from tests.webkit import j, settings_for, web_client
from tests.workerkit import fast_settings, running
from workers.handlers import Registry
from workers.images.inpaint import InpaintConfig, cv2_inpainter
from workers.images.inpaint import inpaint as direct_inpaint
from workers.images.upscale import upscale as direct_upscale
from workers.resources import ResourceConfig
from workers.worker import Worker, WorkerOptions

# -- images --------------------------------------------------------------------------


def scene(w: int = 96, h: int = 72) -> tuple[np.ndarray, np.ndarray]:
    """A gradient with a disc and a line (RGB), and a mask over two parts of it."""
    x = np.linspace(0, 255, w, dtype=np.uint8)
    img = np.dstack([np.tile(x, (h, 1)), np.tile(x[::-1], (h, 1)), np.full((h, w), 90, np.uint8)])
    cv2.circle(img, (w // 3, h // 2), h // 4, (250, 40, 40), -1)
    cv2.line(img, (0, h - 8), (w, 8), (0, 0, 0), 2)
    mask = np.zeros((h, w), np.uint8)
    cv2.rectangle(mask, (w // 3 - 8, h // 2 - 8), (w // 3 + 8, h // 2 + 8), 255, -1)
    cv2.circle(mask, (w - 15, 15), 6, 255, -1)
    return img, mask


def png(arr: np.ndarray) -> bytes:
    if arr.ndim == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR if arr.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
    return cv2.imencode(".png", arr)[1].tobytes()


def unpng(data: bytes) -> np.ndarray:
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr.ndim == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_BGR2RGB if arr.shape[2] == 3 else cv2.COLOR_BGRA2RGBA)
    return arr


def b64(arr: np.ndarray) -> str:
    return base64.b64encode(png(arr)).decode()


def data_url(arr: np.ndarray) -> str:
    return "data:image/png;base64," + b64(arr)


# What IOPaint's front end sends besides image, mask and the cv2 settings: the
# fields that do not apply here, two of them misspelled as that front end spells them.
FRONT_END_EXTRAS = {
    "ldm_steps": 20,
    "ldm_sampler": "plms",
    "zits_wireframe": True,
    "hd_strategy_crop_triger_size": 640,
    "hd_trategy_resize_imit": 2048,
    "prompt": "",
    "negative_prompt": "",
    "use_croper": False,
    "croper_x": 0,
    "croper_y": 0,
    "croper_height": 512,
    "croper_width": 512,
    "use_extender": False,
    "extender_x": 0,
    "extender_y": 0,
    "extender_height": 640,
    "extender_width": 640,
    "sd_mask_blur": 11,
    "sd_strength": 1.0,
    "sd_steps": 50,
    "sd_guidance_scale": 7.5,
    "sd_sampler": "UniPC",
    "sd_match_histograms": False,
    "sd_lcm_lora": False,
    "paint_by_example_example_image": None,
    "p2p_image_guidance_scale": 1.5,
    "enable_controlnet": False,
    "controlnet_conditioning_scale": 0.4,
    "controlnet_method": "",
    "enable_brushnet": False,
    "brushnet_method": "",
    "brushnet_conditioning_scale": 1.0,
    "powerpaint_task": "text-guided",
}


# -- a cluster: the app and a real worker ----------------------------------------------


def cluster_settings(namespace: str, log: EventLog, models: Path, **web: float) -> Settings:
    """One queue for web and worker, a TorchScript model "gray" configured."""
    s = fast_settings(namespace, partitions=log.keys.partitions)
    return msgspec.structs.replace(
        s,
        web=WebSettings(**web),
        models=msgspec.structs.replace(s.models, root=str(models), files={"gray": "gray.pt"}),
    )


@pytest.fixture
def model_root(tmp_path: Path) -> Path:
    class Gray(torch.nn.Module):  # the LaMa signature: (image, mask) -> image
        def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return image * (1 - mask) + mask * 0.5

    root = tmp_path / "models"
    root.mkdir()
    torch.jit.script(Gray()).save(str(root / "gray.pt"))
    return root


@contextlib.asynccontextmanager
async def cluster(
    redis_url: str, log: EventLog, settings: Settings
) -> AsyncIterator[httpx.AsyncClient]:
    options = WorkerOptions(
        node="img",
        queues=settings.queues,
        concurrency=1,
        capabilities=Capabilities(cpu_cores=2, memory_mb=1024),
        resources=ResourceConfig.from_settings(settings, redis_url),
        block_ms=200,
    )
    worker = Worker(log, settings, options, Registry())
    async with running(worker), web_client(redis_url, settings) as client:
        yield client


async def announce_models(log: EventLog, node: str, models: tuple[str, ...]) -> None:
    caps = Capabilities(cpu_cores=2, memory_mb=1024, handlers=("inpaint",), models=models)
    await append_node_event(log, NodeStarted(node=node, capabilities=caps, queues=("q",)))


# -- inpaint -------------------------------------------------------------------------


async def test_inpaint_answers_the_png_a_direct_call_gives(
    redis_url: str, log: EventLog, namespace: str, model_root: Path
) -> None:
    img, mask = scene()
    settings = cluster_settings(namespace, log, model_root, result_timeout=60)
    async with cluster(redis_url, log, settings) as c:
        # IOPaint's front end: data URLs and every field it sends.
        telea = {"cv2_flag": "INPAINT_TELEA", "cv2_radius": 5, "hd_strategy": "Original"}
        r = await c.post(
            "/api/v1/inpaint",
            json={
                "image": data_url(img),
                "mask": data_url(mask),
                **telea,
                "hd_strategy_crop_margin": 128,
                **FRONT_END_EXTRAS,
                "sd_seed": 7,
            },
        )
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "image/png"
        assert r.headers["x-seed"] == "7"
        task_id = r.headers["x-task-id"]
        config = InpaintConfig(**telea)  # type: ignore[arg-type]
        expected = direct_inpaint(img, mask, config, cv2_inpainter(config))
        assert np.array_equal(unpng(r.content), expected)
        submitted = (await log.history(task_id))[0].event
        assert submitted.spec.kind == "inpaint" and submitted.spec.model == "cv2"
        assert "prompt" not in submitted.spec.params

        # A script: bare base64, the Crop strategy forced onto a small image
        # (so each masked region is inpainted on its own), an RGBA image
        # whose alpha must come back untouched.
        rgba = np.dstack(
            [img, np.linspace(10, 250, img.shape[1], dtype=np.uint8)[None].repeat(72, 0)]
        )
        crop = {"hd_strategy": "Crop", "hd_strategy_crop_trigger_size": 64, "cv2_radius": 3}
        r = await c.post("/api/v1/inpaint", json={"image": b64(rgba), "mask": b64(mask), **crop})
        assert r.status_code == 200, r.text
        assert r.headers["x-seed"] == "42"  # IOPaint's default seed
        config = InpaintConfig(**crop, hd_strategy_crop_margin=128)  # type: ignore[arg-type]
        expected = direct_inpaint(rgba, mask, config, cv2_inpainter(config))
        out = unpng(r.content)
        assert out.shape == (72, 96, 4) and np.array_equal(out, expected)

        # -1 asks for a random seed, reported back.
        r = await c.post(
            "/api/v1/inpaint", json={"image": b64(img), "mask": b64(mask), "sd_seed": -1}
        )
        assert r.status_code == 200 and 1 <= int(r.headers["x-seed"]) <= 99_999_999


async def test_inpaint_uses_the_model_switched_to(
    redis_url: str, log: EventLog, namespace: str, model_root: Path
) -> None:
    img, mask = scene(48, 40)
    settings = cluster_settings(namespace, log, model_root, result_timeout=60)
    async with cluster(redis_url, log, settings) as c:
        r = await c.post("/api/v1/model", json={"name": "gray"})
        assert r.status_code == 200, r.text
        r = await c.post(
            "/api/v1/inpaint",
            json={"image": data_url(img), "mask": data_url(mask), "hd_strategy": "Original"},
        )
        assert r.status_code == 200, r.text
        out = unpng(r.content)
        assert np.array_equal(out[mask == 0], img[mask == 0])
        assert np.all(np.abs(out[mask > 0].astype(int) - 128) <= 1)
        task = (await log.history(r.headers["x-task-id"]))[0].event
        assert task.spec.model == "gray"


async def test_input_the_worker_rejects_is_422_and_a_body_it_cannot_read_too(
    redis_url: str, log: EventLog, namespace: str, model_root: Path
) -> None:
    img, _ = scene()
    settings = cluster_settings(namespace, log, model_root, result_timeout=60)
    async with cluster(redis_url, log, settings) as c:
        small = np.zeros((10, 10), np.uint8)
        r = await c.post("/api/v1/inpaint", json={"image": b64(img), "mask": b64(small)})
        assert r.status_code == 422, r.text
        body = j(r)
        assert "mask is 10x10" in body["errors"] and body["task_id"] == r.headers["x-task-id"]
        # A PNG header over corrupt pixel data passes the web's header check;
        # the worker cannot decode it and says so, without retrying.
        broken = png(img)[:60]
        r = await c.post(
            "/api/v1/inpaint",
            json={"image": base64.b64encode(broken).decode(), "mask": b64(small)},
        )
        assert r.status_code == 422, r.text
        assert "image" in j(r)["errors"]
        failed = (await log.history(j(r)["task_id"]))[-1].event
        assert failed.type_name() == "task.failed" and not failed.error.retryable


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"image": "not base64 at all!"}, "image"),
        ({"image": "data:image/png;base64,@@@@"}, "image"),
        ({"image": base64.b64encode(b"just some text").decode()}, "image"),
        ({"image": None}, "image"),
        ({"mask": ""}, "mask"),
        ({"cv2_radius": "wide"}, "cv2_radius"),
        ({"cv2_flag": "INPAINT_MAGIC"}, "cv2_flag"),
        ({"hd_strategy": "Tile"}, "hd_strategy"),
        ({"hd_strategy_crop_margin": [1]}, "hd_strategy_crop_margin"),
        ({"sd_seed": "lucky"}, "sd_seed"),
    ],
)
async def test_bad_input_is_422_naming_the_field_and_submits_nothing(
    redis_url: str, log: EventLog, namespace: str, change: dict, field: str
) -> None:
    img, mask = scene(16, 16)
    body = {"image": b64(img), "mask": b64(mask), **FRONT_END_EXTRAS, **change}
    async with web_client(redis_url, settings_for(namespace)) as c:
        r = await c.post("/api/v1/inpaint", json=body)
    assert r.status_code == 422, r.text
    assert field in j(r)["errors"] and j(r)["errors"] == j(r)["detail"]
    assert await log.redis.exists(log.keys.events(0)) == 0


async def test_non_json_bodies_are_4xx_with_errors(
    redis_url: str, log: EventLog, namespace: str
) -> None:
    async with web_client(redis_url, settings_for(namespace)) as c:
        broken = await c.post(
            "/api/v1/inpaint", content=b"{nope", headers={"content-type": "application/json"}
        )
        text = await c.post("/api/v1/inpaint", content=b"x", headers={"content-type": "text/plain"})
        array = await c.post("/api/v1/inpaint", json=[1, 2])
    assert (broken.status_code, text.status_code, array.status_code) == (400, 415, 422)
    assert all("errors" in j(r) for r in (broken, text, array))


async def test_no_result_in_time_is_504_with_the_task_id(
    redis_url: str, log: EventLog, namespace: str
) -> None:
    img, mask = scene(16, 16)
    async with web_client(redis_url, settings_for(namespace, result_timeout=0.5)) as c:
        r = await c.post("/api/v1/inpaint", json={"image": b64(img), "mask": b64(mask)})
    assert r.status_code == 504, r.text
    body = j(r)
    task_id = body["task_id"]
    assert task_id == r.headers["x-task-id"] and task_id in body["errors"]
    assert r.headers["location"] == f"/v1/tasks/{task_id}"
    history = await log.history(task_id)
    assert [e.event.type_name() for e in history] == ["task.submitted"]


# -- models and config -----------------------------------------------------------------

MODEL_INFO_KEYS = {
    "name",
    "path",
    "model_type",
    "is_single_file_diffusers",
    "need_prompt",
    "controlnets",
    "brushnets",
    "support_strength",
    "support_outpainting",
    "support_lcm_lora",
    "support_controlnet",
    "support_brushnet",
    "support_powerpaint_v2",
}


async def test_server_config_has_what_iopaints_front_end_reads(
    redis_url: str, log: EventLog, namespace: str, model_root: Path
) -> None:
    await announce_models(log, "n1", ("cv2", "mat"))
    settings = cluster_settings(namespace, log, model_root)
    async with web_client(redis_url, settings) as c:
        r = await c.get("/api/v1/server-config")
    assert r.status_code == 200, r.text
    config = j(r)
    assert set(config) == {
        "plugins",
        "modelInfos",
        "removeBGModel",
        "removeBGModels",
        "realesrganModel",
        "realesrganModels",
        "interactiveSegModel",
        "interactiveSegModels",
        "enableFileManager",
        "enableAutoSaving",
        "enableControlnet",
        "controlnetMethod",
        "disableModelSwitch",
        "isDesktop",
        "samplers",
    }
    assert config["plugins"] == [
        {"name": "RealESRGAN", "support_gen_image": True, "support_gen_mask": False}
    ]
    assert [m["name"] for m in config["modelInfos"]] == ["cv2", "gray", "mat"]
    for info in config["modelInfos"]:
        assert set(info) == MODEL_INFO_KEYS
        assert info["model_type"] == "inpaint" and info["need_prompt"] is False
    assert config["realesrganModel"] in config["realesrganModels"]
    assert config["removeBGModel"] in config["removeBGModels"]
    assert config["interactiveSegModel"] in config["interactiveSegModels"]
    assert config["controlnetMethod"] is None and config["disableModelSwitch"] is False
    assert "UniPC" in config["samplers"]


async def test_samplers_answer_get_and_post(redis_url: str, namespace: str) -> None:
    async with web_client(redis_url, settings_for(namespace)) as c:
        got, posted = await c.get("/api/v1/samplers"), await c.post("/api/v1/samplers")
    assert got.status_code == posted.status_code == 200
    assert j(got) == j(posted) and "Euler a" in j(got)


async def test_model_switch_is_shared_through_redis(
    redis_url: str, log: EventLog, namespace: str, model_root: Path
) -> None:
    await announce_models(log, "n1", ("mat",))
    settings = cluster_settings(namespace, log, model_root)
    async with web_client(redis_url, settings) as a, web_client(redis_url, settings) as b:
        r = await a.get("/api/v1/model")
        assert r.status_code == 200 and j(r)["name"] == "cv2"
        assert set(j(r)) == MODEL_INFO_KEYS
        r = await a.post("/api/v1/model", json={"name": "mat", "unknown": 1})
        assert r.status_code == 200, r.text
        assert j(r)["name"] == "mat" and j(r)["model_type"] == "inpaint"
        assert j(await b.get("/api/v1/model"))["name"] == "mat"  # another web process
        assert await log.redis.get(log.keys.web_model()) == b"mat"
        for bad, status in (({"name": "lama"}, 422), ({"model": "gray"}, 422)):
            r = await b.post("/api/v1/model", json=bad)
            assert r.status_code == status, r.text
            assert "errors" in j(r)
        assert "'lama'" in j(await b.post("/api/v1/model", json={"name": "lama"}))["errors"]
        r = await b.post("/api/v1/model", json={"name": "gray"})
        assert r.status_code == 200 and j(await a.get("/api/v1/model"))["name"] == "gray"


# -- adjust_mask -----------------------------------------------------------------------


@pytest.mark.parametrize("operate", ["expand", "shrink", "reverse"])
async def test_adjust_mask_matches_opencv(redis_url: str, namespace: str, operate: str) -> None:
    _, mask = scene()
    # The front end sends its drawing: the brush colour on transparency.
    drawn = np.zeros((*mask.shape, 4), np.uint8)
    drawn[mask > 0] = (255, 203, 0, 186)
    async with web_client(redis_url, settings_for(namespace)) as c:
        r = await c.post(
            "/api/v1/adjust_mask",
            json={"mask": data_url(drawn), "operate": operate, "kernel_size": 3},
        )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    out = unpng(r.content)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))
    expected = {
        "expand": cv2.dilate(mask, kernel),
        "shrink": cv2.erode(mask, kernel),
        "reverse": cv2.bitwise_not(mask),
    }[operate]
    assert out.shape == (*mask.shape, 4)
    assert np.array_equal(out[:, :, 3] > 0, expected > 0)
    assert np.all(out[expected > 0] == (255, 203, 0, 186))
    assert np.all(out[expected == 0] == 0)


async def test_adjust_mask_bad_input(redis_url: str, namespace: str) -> None:
    _, mask = scene(16, 16)
    async with web_client(redis_url, settings_for(namespace)) as c:
        for body, field in (
            ({"mask": b64(mask), "operate": "grow"}, "operate"),
            ({"mask": b64(mask)}, "operate"),
            ({"mask": b64(mask), "operate": "expand", "kernel_size": 10_000}, "kernel_size"),
            ({"mask": "%%%", "operate": "expand"}, "mask"),
            ({"operate": "reverse"}, "mask"),
        ):
            r = await c.post("/api/v1/adjust_mask", json=body)
            assert r.status_code == 422, (body, r.text)
            assert field in j(r)["errors"]


# -- plugins ---------------------------------------------------------------------------


async def test_realesrgan_plugin_upscales_by_the_scale(
    redis_url: str, log: EventLog, namespace: str, model_root: Path
) -> None:
    img, _ = scene(30, 20)
    settings = cluster_settings(namespace, log, model_root, result_timeout=60)
    async with cluster(redis_url, log, settings) as c:
        # IOPaint's front end sends ``upscale``, its server reads ``scale``.
        front = await c.post(
            "/api/v1/run_plugin_gen_image",
            json={"name": "RealESRGAN", "image": data_url(img), "upscale": 2, "clicks": []},
        )
        script = await c.post(
            "/api/v1/run_plugin_gen_image",
            json={"name": "RealESRGAN", "image": b64(img), "scale": 3},
        )
        bad_scale = await c.post(
            "/api/v1/run_plugin_gen_image",
            json={"name": "RealESRGAN", "image": b64(img), "scale": 9},
        )
    assert front.status_code == 200, front.text
    assert front.headers["content-type"] == "image/png" and "x-task-id" in front.headers
    assert np.array_equal(unpng(front.content), direct_upscale(img, 2.0))
    assert script.status_code == 200, script.text
    assert unpng(script.content).shape == (60, 90, 3)
    assert bad_scale.status_code == 422 and "scale" in j(bad_scale)["errors"]


async def test_unknown_plugin_is_422_naming_it(
    redis_url: str, log: EventLog, namespace: str
) -> None:
    img, _ = scene(16, 16)
    async with web_client(redis_url, settings_for(namespace)) as c:
        r = await c.post(
            "/api/v1/run_plugin_gen_image", json={"name": "RemoveBG", "image": b64(img)}
        )
        missing = await c.post("/api/v1/run_plugin_gen_image", json={"name": "RealESRGAN"})
        no_name = await c.post("/api/v1/run_plugin_gen_image", json={"image": b64(img)})
    assert r.status_code == 422 and "'RemoveBG'" in j(r)["errors"]
    assert missing.status_code == 422 and "image" in j(missing)["errors"]
    assert no_name.status_code == 422 and "name" in j(no_name)["errors"]
    assert await log.redis.exists(log.keys.events(0)) == 0
