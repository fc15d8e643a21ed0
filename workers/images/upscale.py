"""Upscaling by a factor between 1 and 4: bicubic in torch, or a super-resolution
TorchScript model (Real-ESRGAN style) brought to the exact requested size."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from eventcore.images.codec import DEFAULT_MAX_PIXELS, ImageError
from workers.images.models import ModelError, resolve_device

SRModel = Callable[[torch.Tensor], torch.Tensor]

MIN_SCALE, MAX_SCALE = 1.0, 4.0


def upscale(
    image: np.ndarray,
    scale: float,
    *,
    model: SRModel | None = None,
    device: str = "auto",
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """``image`` (``uint8`` RGB or RGBA) enlarged to ``(round(w * scale), round(h * scale))``.

    Without ``model`` every channel is resized bicubically (antialiased) on
    ``device``. With ``model`` (a module taking ``[1, 3, H, W]`` in [0, 1] and
    returning ``[1, 3, sH, sW]`` for its own factor ``s``, on the same device)
    the colour comes from the model, resized bicubically to the exact size if
    ``s`` differs, and an alpha channel is resized bicubically. ``scale`` 1
    returns a copy.

    Raises :class:`ImageError` for a scale outside [1, 4] or a result larger
    than ``max_pixels`` (by default the decode cap: the service never makes
    an image it would refuse to read), :class:`ModelError` for a model that
    returns the wrong shape.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ImageError(f"image must be uint8 RGB or RGBA, got {image.dtype} {image.shape}")
    if (
        isinstance(scale, bool)
        or not isinstance(scale, numbers.Real)
        or not math.isfinite(scale)
        or not MIN_SCALE <= scale <= MAX_SCALE
    ):
        raise ImageError(f"scale is {scale!r}, must be between {MIN_SCALE:g} and {MAX_SCALE:g}")
    height, width = image.shape[:2]
    size = (round(height * scale), round(width * scale))
    if size[0] * size[1] > max_pixels:
        raise ImageError(
            f"upscaling {width}x{height} by {scale:g} gives {size[1]}x{size[0]}"
            f" ({size[0] * size[1]} pixels), over the cap of {max_pixels} pixels"
        )
    if size == (height, width):
        return image.copy()

    target = resolve_device(device)
    with torch.inference_mode():
        # [1, C, H, W] float on the device, still 0..255.
        pixels = torch.from_numpy(image).to(target).permute(2, 0, 1)[None].float()
        if model is None:
            out = _bicubic(pixels, size)
        else:
            rgb = _run_model(model, pixels[:, :3] / 255.0, (height, width))
            if tuple(rgb.shape[2:]) != size:
                rgb = _bicubic(rgb, size)
            parts = [rgb.clamp(0, 1) * 255.0]
            if image.shape[2] == 4:
                parts.append(_bicubic(pixels[:, 3:], size))
            out = torch.cat(parts, dim=1)
        out = out.clamp(0, 255).round().to(torch.uint8)
        return out[0].permute(1, 2, 0).cpu().numpy()


def _bicubic(pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    # antialias only acts when shrinking: a model's 4x output brought down to 1.5x.
    return F.interpolate(pixels, size=size, mode="bicubic", antialias=True, align_corners=False)


def _run_model(model: SRModel, rgb: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    out = model(rgb)
    if (
        not isinstance(out, torch.Tensor)
        or out.ndim != 4
        or tuple(out.shape[:2]) != (1, 3)
        or out.shape[2] < size[0]
        or out.shape[3] < size[1]
    ):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(
            f"upscale model returned {got} for input [1, 3, {size[0]}, {size[1]}];"
            " expected [1, 3, sH, sW] with s >= 1"
        )
    return out.float()
