"""Inpainting with IOPaint's semantics: the HD strategies (Original, Crop,
Resize) around any model, and OpenCV's two classical inpainters as a model.

A model is any callable ``(rgb, mask) -> rgb`` on ``uint8`` arrays of the same
height and width, ``mask`` holding 0 (keep) and 255 (fill). Whatever the model
does, :func:`inpaint` returns the input's pixels wherever the mask is 0, and
the input's alpha channel untouched.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from eventcore.errors import TaskError
from eventcore.images.codec import ImageError, InpaintConfig

Model = Callable[[np.ndarray, np.ndarray], np.ndarray]
Progress = Callable[[float, str], None]

_CV2_FLAGS = {"INPAINT_NS": cv2.INPAINT_NS, "INPAINT_TELEA": cv2.INPAINT_TELEA}


def cv2_inpainter(config: InpaintConfig) -> Model:
    """A model running OpenCV's ``cv2.inpaint`` with the config's flag and radius
    (IOPaint's "cv2" model)."""
    config.validate()
    flag, radius = _CV2_FLAGS[config.cv2_flag], config.cv2_radius

    def run(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
        # cv2.inpaint treats each channel alike, so RGB order needs no swap.
        return cv2.inpaint(rgb, mask, radius, flag)

    return run


def inpaint(
    image: np.ndarray,
    mask: np.ndarray,
    config: InpaintConfig,
    model: Model,
    *,
    progress: Progress | None = None,
) -> np.ndarray:
    """Inpaint ``image`` (``uint8`` RGB or RGBA) where ``mask`` (``uint8`` HxW) is
    above 127, running ``model`` as ``config.hd_strategy`` says.

    Returns an array of the input's shape: masked pixels from the model,
    every other pixel and the alpha channel exactly as given. ``progress`` is
    called with a fraction that never decreases and a short message.
    """
    config.validate()
    _check_inputs(image, mask)
    report = progress or (lambda _fraction, _message: None)
    alpha = image[:, :, 3] if image.shape[2] == 4 else None
    rgb = np.ascontiguousarray(image[:, :, :3])
    filled = mask > 127
    # The model sees a clean 0/255 mask whatever came in.
    mask = np.where(filled, np.uint8(255), np.uint8(0))
    longer = max(rgb.shape[:2])

    if not filled.any():
        result = rgb.copy()
        report(1.0, "mask is empty, nothing to inpaint")
    elif config.hd_strategy == "Crop" and longer > config.hd_strategy_crop_trigger_size:
        result = _run_crops(rgb, mask, filled, config.hd_strategy_crop_margin, model, report)
    elif config.hd_strategy == "Resize" and longer > config.hd_strategy_resize_limit:
        result = _run_resized(rgb, mask, config.hd_strategy_resize_limit, model, report)
    else:
        result = _run_model(model, rgb, mask)
        report(1.0, "inpainted")

    # IOPaint's paste-back (result * mask + image * (1 - mask)) with a binary
    # mask: whatever the model or a resize did elsewhere is undone here.
    result = np.where(filled[:, :, None], result, rgb)
    if alpha is not None:
        result = np.dstack([result, alpha])
    return result


def _check_inputs(image: np.ndarray, mask: np.ndarray) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ImageError(f"image must be uint8 RGB or RGBA, got {image.dtype} {image.shape}")
    if mask.dtype != np.uint8 or mask.ndim != 2:
        raise ImageError(f"mask must be uint8 (H, W), got {mask.dtype} {mask.shape}")
    if mask.shape != image.shape[:2]:
        (mh, mw), (ih, iw) = mask.shape, image.shape[:2]
        raise ImageError(f"mask is {mw}x{mh} but image is {iw}x{ih}")


def _run_model(model: Model, rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = model(rgb, mask)
    if not isinstance(out, np.ndarray) or out.shape != rgb.shape or out.dtype != np.uint8:
        got = f"{out.dtype} {out.shape}" if isinstance(out, np.ndarray) else type(out).__name__
        # A model that breaks its contract will do so again: do not retry.
        raise TaskError(
            f"inpaint model returned {got} for a uint8 {rgb.shape} input", non_retryable=True
        )
    return out


def _run_crops(
    rgb: np.ndarray,
    mask: np.ndarray,
    filled: np.ndarray,
    margin: int,
    model: Model,
    report: Progress,
) -> np.ndarray:
    """IOPaint's Crop strategy: the model sees one masked region at a time
    with ``margin`` pixels of context, cut from the original image."""
    height, width = rgb.shape[:2]
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    # Sorted so the order (and any overlap's winner) does not depend on OpenCV's.
    boxes = sorted(cv2.boundingRect(c) for c in contours)
    result = rgb.copy()
    for i, (x, y, w, h) in enumerate(boxes, start=1):
        left, right = _expand(x, x + w, margin, width)
        top, bottom = _expand(y, y + h, margin, height)
        window = np.s_[top:bottom, left:right]
        out = _run_model(model, rgb[window], mask[window])
        # Only masked pixels: an overlapping crop must not undo an earlier one.
        region = filled[window]
        result[window][region] = out[region]
        report(i / len(boxes), f"crop {i}/{len(boxes)}")
    return result


def _expand(low: int, high: int, margin: int, limit: int) -> tuple[int, int]:
    """Grow ``[low, high)`` by ``margin`` each side within ``[0, limit)``; near an
    edge the window slides inward instead of shrinking, as IOPaint's does, so
    the model keeps as much context as asked for."""
    size = min(high - low + 2 * margin, limit)
    start = min(max(low - margin, 0), limit - size)
    return start, start + size


def _run_resized(
    rgb: np.ndarray, mask: np.ndarray, limit: int, model: Model, report: Progress
) -> np.ndarray:
    """IOPaint's Resize strategy: the model runs on a copy whose longer side is
    ``limit`` and its result is scaled back to full size."""
    height, width = rgb.shape[:2]
    ratio = limit / max(height, width)
    size = (max(1, int(width * ratio + 0.5)), max(1, int(height * ratio + 0.5)))
    # Bicubic both ways, as IOPaint. The scaled mask is grey at its edges; any
    # pixel touched by the hole joins it (LaMa's own rule is mask > 0) so the
    # model never treats part of what it must fill as trustworthy context.
    small = cv2.resize(rgb, size, interpolation=cv2.INTER_CUBIC)
    small_mask = cv2.resize(mask, size, interpolation=cv2.INTER_CUBIC)
    small_mask = np.where(small_mask > 0, np.uint8(255), np.uint8(0))
    report(0.0, f"resized to {size[0]}x{size[1]}")
    out = _run_model(model, small, small_mask)
    report(1.0, "inpainted")
    return cv2.resize(out, (width, height), interpolation=cv2.INTER_CUBIC)
