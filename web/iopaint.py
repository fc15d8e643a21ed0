"""IOPaint-compatible routes (``/api/v1/...``), so IOPaint's (Lama Cleaner's)
web front end and scripts written for it can drive the cluster.

Request and response shapes follow IOPaint's ``iopaint/schema.py`` and
``api.py`` and what its front end (``web_app/src/lib/api.ts``) sends:

- ``POST /api/v1/inpaint``: IOPaint's ``InpaintRequest`` (images as data URLs
  or bare base64). Fields that do not apply here (prompt, ``sd_*``, croper,
  controlnet, ... and the front end's misspelled ``hd_strategy_crop_triger_size``
  and ``hd_trategy_resize_imit``) are ignored, as IOPaint ignores unknown
  fields. The images become blobs, an ``inpaint`` task runs with the current
  model, and the answer is the PNG with ``X-Seed`` (and ``X-Task-Id``).
- ``GET``/``POST /api/v1/model``: the current model as IOPaint's ``ModelInfo``;
  the choice is kept in Redis so every web process uses the same one.
- ``GET /api/v1/server-config``: IOPaint's ``ServerConfigResponse``.
- ``GET``/``POST /api/v1/samplers``: IOPaint registers GET, its front end POSTs.
- ``POST /api/v1/adjust_mask``: expand, shrink or reverse a mask, here.
- ``POST /api/v1/run_plugin_gen_image``: ``RealESRGAN`` runs an ``upscale`` task.

Image work is done in a thread, and the image codec (``eventcore.images.codec``,
shared with the workers) is imported on first use: it loads OpenCV, a cost a
web process that never serves these routes should not pay.
"""

from __future__ import annotations

import asyncio
import random
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from eventcore.blobs import BlobMissing
from eventcore.codec import text
from eventcore.events import (
    TaskCancelled,
    TaskDeadLettered,
    TaskFailed,
    TaskSucceeded,
    TaskTimedOut,
)
from eventcore.waiting import wait_terminal
from web.errors import ApiError
from web.limits import decode_any, read_json
from web.responses import error_response, json_response
from web.state import WebState, state_of
from web.submit import SubmitRequest, submit

__all__ = ["ModelInfo", "current_model", "offered_models", "routes"]

CV2 = "cv2"
REALESRGAN = "RealESRGAN"
# The name a configured or announced super-resolution model must have for the
# RealESRGAN plugin to use it (IOPaint's default); without one it is bicubic.
REALESRGAN_MODEL = "realesr-general-x4v3"
# IOPaint's SDSampler values: its front end needs the list even for erase models.
SAMPLERS = (
    "DPM++ 2M",
    "DPM++ 2M Karras",
    "DPM++ 2M SDE",
    "DPM++ 2M SDE Karras",
    "DPM++ SDE",
    "DPM++ SDE Karras",
    "DPM2",
    "DPM2 Karras",
    "DPM2 a",
    "DPM2 a Karras",
    "Euler",
    "Euler a",
    "Heun",
    "LMS",
    "LMS Karras",
    "DDIM",
    "PNDM",
    "UniPC",
    "LCM",
)
# IOPaint's brush colour (#ffcc00 at 73% opacity): adjust_mask answers the
# mask painted the way the front end draws it.
MASK_RGBA = (255, 203, 0, int(255 * 0.73))


# -- shapes ------------------------------------------------------------------------


class ModelInfo(msgspec.Struct, frozen=True, kw_only=True):
    """IOPaint's ``ModelInfo`` for an erase model: every model here is one
    (``model_type`` "inpaint"), so none needs a prompt or supports diffusion
    options."""

    name: str
    path: str
    model_type: str = "inpaint"
    is_single_file_diffusers: bool = False
    need_prompt: bool = False
    controlnets: tuple[str, ...] = ()
    brushnets: tuple[str, ...] = ()
    support_strength: bool = False
    support_outpainting: bool = False
    support_lcm_lora: bool = False
    support_controlnet: bool = False
    support_brushnet: bool = False
    support_powerpaint_v2: bool = False


class PluginInfo(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    support_gen_image: bool = False
    support_gen_mask: bool = False


PLUGINS = (PluginInfo(name=REALESRGAN, support_gen_image=True),)

# Request bodies are decoded leniently, as IOPaint's pydantic models are:
# unknown fields are ignored and "5" passes for 5; a wrong value on a field
# used here is a 422 naming it.


class InpaintBody(msgspec.Struct, frozen=True, kw_only=True):
    """The part of IOPaint's ``InpaintRequest`` read here besides the inpaint
    settings (which :class:`workers.images.inpaint.InpaintConfig` decodes)."""

    image: str | None = None
    mask: str | None = None
    sd_seed: int = 42


class SwitchModelBody(msgspec.Struct, frozen=True):
    name: str


class AdjustMaskBody(msgspec.Struct, frozen=True, kw_only=True):
    mask: str | None = None
    operate: Literal["expand", "shrink", "reverse"]
    # IOPaint sets no bound; the kernel is (2k + 1) pixels wide.
    kernel_size: Annotated[int, Meta(ge=0, le=256)] = 5


class PluginBody(msgspec.Struct, frozen=True, kw_only=True):
    """IOPaint's ``RunPluginRequest``. Its server reads ``scale``; its front end
    sends ``upscale``: either is taken, ``scale`` first."""

    name: str
    image: str | None = None
    scale: float | None = None
    upscale: float | None = None


async def _body(request: Request, into: type[Any]) -> tuple[dict[str, Any], Any]:
    data = await read_json(request, dict[str, Any])
    return data, decode_any(data, into)


# -- models ------------------------------------------------------------------------


async def current_model(web: WebState) -> str:
    """The model inpaint requests use, shared by every web process through Redis."""
    raw = await web.redis.get(web.log.keys.web_model())
    if raw is None:
        return CV2
    return text(raw)


async def offered_models(web: WebState) -> list[str]:
    """``cv2``, the configured TorchScript models and those live nodes announce
    (``cv2`` first, then by name)."""
    names = set(web.settings.models.files) | (await web.nodes()).models
    return [CV2, *sorted(names - {CV2})]


async def _inpaint_models(web: WebState) -> list[str]:
    # The super-resolution model is offered to the plugin, not as an eraser.
    return [m for m in await offered_models(web) if m != REALESRGAN_MODEL]


def _info(name: str) -> ModelInfo:
    return ModelInfo(name=name, path=name)


async def get_model(request: Request) -> Response:
    web = state_of(request)
    await web.auth.principal(request, "read")
    return json_response(_info(await current_model(web)))


async def switch_model(request: Request) -> Response:
    """Make ``name`` the model every web process submits inpaint tasks with."""
    web = state_of(request)
    # The choice applies to everyone, so it takes the admin scope when auth is on.
    await web.auth.principal(request, "admin")
    _, body = await _body(request, SwitchModelBody)
    models = await _inpaint_models(web)
    if body.name not in models:
        raise ApiError(
            422,
            "unknown_model",
            f"model {body.name!r} is not offered; models: {', '.join(models)}",
        )
    await web.redis.set(web.log.keys.web_model(), body.name)
    return json_response(_info(body.name))


async def server_config(request: Request) -> Response:
    web = state_of(request)
    await web.auth.principal(request, "read")
    return json_response(
        {
            "plugins": PLUGINS,
            "modelInfos": [_info(m) for m in await _inpaint_models(web)],
            # The plugins below are not offered; their fields are IOPaint's
            # defaults, which its front end needs to start.
            "removeBGModel": "briaai/RMBG-1.4",
            "removeBGModels": ["briaai/RMBG-1.4"],
            "realesrganModel": REALESRGAN_MODEL,
            "realesrganModels": [REALESRGAN_MODEL],
            "interactiveSegModel": "vit_b",
            "interactiveSegModels": ["vit_b"],
            "enableFileManager": False,
            "enableAutoSaving": False,
            "enableControlnet": False,
            "controlnetMethod": None,
            "disableModelSwitch": False,
            "isDesktop": False,
            "samplers": SAMPLERS,
        }
    )


async def samplers(request: Request) -> Response:
    await state_of(request).auth.principal(request, "read")
    return json_response(SAMPLERS)


# -- image work (in a thread) -------------------------------------------------------


def _image_bytes(text: str | None, field: str) -> bytes:
    """The bytes of a data URL or bare base64 field; 422 naming ``field`` when
    it is missing, not base64 or not a PNG, JPEG, WebP or BMP image (pixels are
    decoded by the worker, which reports a corrupt body as an input error)."""
    from eventcore.images.codec import ImageError, b64_to_bytes, image_header

    if text is None:
        raise ApiError(422, "invalid", f"{field}: required (a data URL or base64 image)")
    try:
        data = b64_to_bytes(text, field)
        image_header(data, field)
    except ImageError as exc:
        raise ApiError(422, "invalid", str(exc)) from None
    return data


def _inpaint_inputs(data: dict[str, Any], body: InpaintBody) -> tuple[bytes, bytes, dict[str, Any]]:
    """Image bytes, mask bytes and the inpaint settings as task params."""
    from eventcore.images.codec import ImageError, InpaintConfig

    image = _image_bytes(body.image, "image")
    mask = _image_bytes(body.mask, "mask")
    known = {k: v for k, v in data.items() if k in InpaintConfig.__struct_fields__}
    config = decode_any(known, InpaintConfig)
    try:
        config.validate()
    except ImageError as exc:
        raise ApiError(422, "invalid", str(exc)) from None
    return image, mask, msgspec.structs.asdict(config)


def _adjust_mask(body: AdjustMaskBody) -> bytes:
    """IOPaint's adjust_mask: the mask thresholded, then dilated (expand) or
    eroded (shrink) by an elliptic (2k + 1) kernel, or inverted (reverse);
    answered as an RGBA PNG in the front end's brush colour."""
    from eventcore.images.codec import ImageError, decode_image, encode_png

    data = _image_bytes(body.mask, "mask")
    try:
        pixels = decode_image(data, what="mask")
    except ImageError as exc:
        raise ApiError(422, "invalid", str(exc)) from None
    import cv2  # after the codec, which sets OpenCV's pixel cap
    import numpy as np

    # Grey as IOPaint reads a mask: luma of the colour, alpha ignored.
    grey = cv2.cvtColor(np.ascontiguousarray(pixels[:, :, :3]), cv2.COLOR_RGB2GRAY)
    mask = np.where(grey >= 127, np.uint8(255), np.uint8(0))
    if body.operate == "reverse":
        mask = 255 - mask
    else:
        size = 2 * body.kernel_size + 1
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
        mask = (cv2.dilate if body.operate == "expand" else cv2.erode)(mask, kernel)
    out = np.zeros((*mask.shape, 4), np.uint8)
    out[mask > 128] = MASK_RGBA
    return encode_png(out)


# -- tasks -------------------------------------------------------------------------


async def _run(
    web: WebState,
    req: SubmitRequest,
    tenant: str,
    headers: dict[str, str],
    uploads: dict[str, bytes],
) -> Response:
    """Submit ``req`` with its images (stored once it is routed), wait for the
    task and answer with its PNG; 504 with the task id when it takes longer
    than ``web.result_timeout``."""
    result, _ = await submit(web, req, tenant=tenant, uploads=uploads)
    task_id = result.task_id
    headers = {**headers, "X-Task-Id": task_id}
    done = await wait_terminal(web.waiting_log, task_id, timeout=web.settings.web.result_timeout)
    if done is None:
        detail = (
            f"task {task_id} did not finish within {web.settings.web.result_timeout:g}s;"
            f" it goes on: fetch /v1/tasks/{task_id}/result later"
        )
        return _task_error(504, "timeout", detail, task_id, headers)
    match done:
        case TaskSucceeded():
            return await _png(web, done, headers)
        case TaskFailed(error=error):
            # A non-retryable failure is the worker saying the input is unusable.
            status = 502 if error.retryable else 422
            code = "task_failed" if error.retryable else "invalid"
            return _task_error(status, code, error.message, task_id, headers)
        case TaskTimedOut(timeout=timeout):
            detail = f"task {task_id} ran past its hard timeout of {timeout:g}s"
            return _task_error(502, "task_timed_out", detail, task_id, headers)
        case TaskCancelled(reason=reason):
            detail = f"task {task_id} was cancelled" + (f": {reason}" if reason else "")
            return _task_error(502, "task_cancelled", detail, task_id, headers)
        case TaskDeadLettered(reason=reason):
            detail = f"task {task_id} was dead-lettered: {reason}"
            return _task_error(502, "task_dead_lettered", detail, task_id, headers)
    # wait_terminal answers only with the terminal events matched above.
    raise AssertionError(f"task {task_id} ended with {done.type_name()}")


async def _png(web: WebState, done: TaskSucceeded, headers: dict[str, str]) -> Response:
    ref = done.result_ref or (done.result or {}).get("blob")
    try:
        data = await web.blobs.get(ref) if isinstance(ref, str) else None
    except BlobMissing:
        data = None
    if data is None:
        detail = f"task {done.task_id} succeeded but its result image is gone"
        return _task_error(502, "no_result", detail, done.task_id, headers)
    return Response(data, media_type="image/png", headers=headers)


def _task_error(
    status: int, code: str, detail: str, task_id: str, headers: dict[str, str]
) -> Response:
    # Built here rather than raised: the body carries the task id as well.
    headers = {**headers, "Location": f"/v1/tasks/{task_id}"}
    return error_response(status, code, detail, headers, errors=detail, task_id=task_id)


# -- routes ------------------------------------------------------------------------


async def inpaint(request: Request) -> Response:
    web = state_of(request)
    who = await web.auth.principal(request, "submit")
    data, body = await _body(request, InpaintBody)
    image, mask, settings = await asyncio.to_thread(_inpaint_inputs, data, body)
    # As IOPaint: -1 asks for a random seed, which is reported back.
    seed = random.randint(1, 99_999_999) if body.sd_seed == -1 else body.sd_seed
    req = SubmitRequest(kind="inpaint", params=settings, model=await current_model(web))
    uploads = {"image": image, "mask": mask}
    return await _run(web, req, who.tenant, {"X-Seed": str(seed)}, uploads)


async def adjust_mask(request: Request) -> Response:
    web = state_of(request)
    await web.auth.principal(request, "submit")
    _, body = await _body(request, AdjustMaskBody)
    png = await asyncio.to_thread(_adjust_mask, body)
    return Response(png, media_type="image/png")


async def run_plugin_gen_image(request: Request) -> Response:
    web = state_of(request)
    who = await web.auth.principal(request, "submit")
    _, body = await _body(request, PluginBody)
    names = [p.name for p in PLUGINS if p.support_gen_image]
    if body.name not in names:
        raise ApiError(
            422,
            "unknown_plugin",
            f"plugin {body.name!r} is not offered; plugins: {', '.join(names)}",
        )
    image = await asyncio.to_thread(_image_bytes, body.image, "image")
    scale = next((s for s in (body.scale, body.upscale) if s is not None), 2.0)
    model = REALESRGAN_MODEL if REALESRGAN_MODEL in await offered_models(web) else None
    req = SubmitRequest(kind="upscale", params={"scale": scale}, model=model)
    return await _run(web, req, who.tenant, {}, {"image": image})


# Request bodies, for /openapi.json.
BODIES = {
    ("POST", "/api/v1/inpaint"): InpaintBody,
    ("POST", "/api/v1/run_plugin_gen_image"): PluginBody,
    ("POST", "/api/v1/model"): SwitchModelBody,
    ("POST", "/api/v1/adjust_mask"): AdjustMaskBody,
}

routes: list[BaseRoute] = [
    Route("/api/v1/inpaint", inpaint, methods=["POST"]),
    Route("/api/v1/model", get_model, methods=["GET"]),
    Route("/api/v1/model", switch_model, methods=["POST"]),
    Route("/api/v1/server-config", server_config, methods=["GET"]),
    Route("/api/v1/samplers", samplers, methods=["GET", "POST"]),
    Route("/api/v1/adjust_mask", adjust_mask, methods=["POST"]),
    Route("/api/v1/run_plugin_gen_image", run_plugin_gen_image, methods=["POST"]),
]
