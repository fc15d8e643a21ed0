"""The ``inpaint`` and ``upscale`` task kinds: blobs in, a PNG blob out.

Glue only: fetch the input blobs, call the pure image functions of
:mod:`workers.images`, store the result. Params:

- ``inpaint``: ``image`` and ``mask`` (blob references), the model from the
  task's ``model`` (default ``cv2``; any other name is a TorchScript model from
  config), and IOPaint's settings (``cv2_flag``, ``cv2_radius``,
  ``hd_strategy``, ``hd_strategy_crop_margin``, ...; unknown keys ignored).
- ``upscale``: ``image``, ``scale`` (1-4, default 2), optional ``model`` (a
  TorchScript super-resolution model from config).

The result is ``{"blob": ref, "content_type": "image/png", "width", "height"}``.
torch and OpenCV are imported on first use, so workers that never run these
kinds never pay for them.
"""

from __future__ import annotations

from typing import Any

from workers.context import TaskContext
from workers.handlers.registry import handler

CV2 = "cv2"


def _input(ctx: TaskContext, name: str) -> bytes:
    from eventcore.images.codec import ImageError

    ref = ctx.params.get(name)
    if not isinstance(ref, str):
        raise ImageError(f"param {name!r} must be a blob reference (sha256:...)")
    try:
        return ctx.blobs.get(ref)
    except ValueError as exc:
        raise ImageError(f"param {name!r}: {exc}") from None


def _result(ctx: TaskContext, image: Any) -> dict[str, Any]:
    from eventcore.images.codec import encode_png

    ctx.progress(0.95, "encode")
    png = encode_png(image)
    blob = ctx.blobs.put(png)
    height, width = image.shape[:2]
    return {"blob": blob.ref, "content_type": "image/png", "width": width, "height": height}


@handler("inpaint", models=(CV2,))
def inpaint_task(ctx: TaskContext) -> dict[str, Any]:
    from eventcore.images.codec import decode_image, decode_mask
    from workers.images.inpaint import InpaintConfig, cv2_inpainter, inpaint

    config = InpaintConfig.from_params(ctx.params)
    model_name = ctx.model or ctx.params.get("model") or CV2
    ctx.progress(0.0, "decode")
    image = decode_image(_input(ctx, "image"), what="image")
    mask = decode_mask(_input(ctx, "mask"), (image.shape[1], image.shape[0]))
    model = cv2_inpainter(config) if model_name == CV2 else ctx.models.get(model_name)
    ctx.progress(0.1, f"model {model_name}")
    out = inpaint(image, mask, config, model, progress=lambda f, m: ctx.progress(0.1 + 0.8 * f, m))
    return _result(ctx, out)


@handler("upscale")
def upscale_task(ctx: TaskContext) -> dict[str, Any]:
    from eventcore.images.codec import ImageError, decode_image
    from workers.images.upscale import upscale

    try:
        scale = float(ctx.params.get("scale", 2))
    except (TypeError, ValueError):
        raise ImageError(
            f"param 'scale' must be a number, not {ctx.params.get('scale')!r}"
        ) from None
    ctx.progress(0.0, "decode")
    image = decode_image(_input(ctx, "image"), what="image")
    model_name = ctx.model or ctx.params.get("model")
    model = ctx.models.get(model_name).module if model_name else None
    ctx.progress(0.2, "resize" if model is None else f"model {model_name}")
    out = upscale(image, scale, model=model, device=str(ctx.models.device) if model else "auto")
    return _result(ctx, out)
