"""workers.images.upscale: sizes, bounds, bicubic and model paths, alpha."""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from eventcore.images.codec import ImageError
from workers.images.models import ModelError, ModelStore
from workers.images.upscale import upscale


def sample_rgb(width: int, height: int) -> np.ndarray:
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    img = np.dstack([np.broadcast_to(x, (height, width)), np.broadcast_to(y, (height, width))])
    img = np.ascontiguousarray(np.dstack([img, (x + y) / 2]).astype(np.uint8))
    cv2.circle(img, (width // 2, height // 2), min(width, height) // 4, (250, 30, 30), -1)
    cv2.putText(img, "up", (2, height - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1)
    return img


def nearest_x4(rgb: torch.Tensor) -> torch.Tensor:
    """A stand-in super-resolution model with a native factor of 4."""
    return F.interpolate(rgb, scale_factor=4, mode="nearest")


@pytest.mark.parametrize("scale", [1, 1.5, 2, 4, 2.37])
@pytest.mark.parametrize("size", [(64, 48), (65, 47), (1, 1)])
@pytest.mark.parametrize("with_model", [False, True])
def test_output_size(size: tuple[int, int], scale: float, with_model: bool) -> None:
    width, height = size
    out = upscale(sample_rgb(width, height), scale, model=nearest_x4 if with_model else None)
    assert out.shape == (round(height * scale), round(width * scale), 3)
    assert out.dtype == np.uint8


@pytest.mark.parametrize("scale", [0.5, 0.999, 4.01, 5, float("nan"), float("inf"), True, "2"])
def test_scales_outside_1_to_4_are_refused(scale: object) -> None:
    with pytest.raises(ImageError, match="must be between 1 and 4") as info:
        upscale(sample_rgb(16, 16), scale)  # type: ignore[arg-type]
    assert info.value.non_retryable


def test_numpy_scalars_are_accepted() -> None:
    assert upscale(sample_rgb(10, 10), np.float64(2.0)).shape == (20, 20, 3)
    assert upscale(sample_rgb(10, 10), np.int64(3)).shape == (30, 30, 3)


@pytest.mark.parametrize("channels", [3, 4])
@pytest.mark.parametrize("with_model", [False, True])
def test_constant_image_stays_constant(channels: int, with_model: bool) -> None:
    colour = (200, 17, 99, 77)[:channels]
    image = np.empty((31, 45, channels), np.uint8)
    image[:] = colour
    for scale in (1.5, 2, 4):
        out = upscale(image, scale, model=nearest_x4 if with_model else None)
        assert out.shape[2] == channels
        assert (out == np.array(colour, np.uint8)).all()


def test_scale_one_is_a_copy() -> None:
    image = sample_rgb(33, 21)
    out = upscale(image, 1.0)
    np.testing.assert_array_equal(out, image)
    assert out is not image


def test_bicubic_matches_torch_and_keeps_alpha() -> None:
    rgb = sample_rgb(50, 30)
    alpha = np.tile(np.linspace(0, 255, 50).astype(np.uint8), (30, 1))
    out = upscale(np.dstack([rgb, alpha]), 2, device="cpu")
    assert out.shape == (60, 100, 4)
    pixels = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
    expected = F.interpolate(
        pixels, size=(60, 100), mode="bicubic", antialias=True, align_corners=False
    )
    expected = expected.clamp(0, 255).round().to(torch.uint8)[0].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(out[..., :3], expected)
    # Alpha is resized too, not dropped or reset: still a left-to-right ramp.
    assert (np.diff(out[..., 3].astype(int), axis=1) >= -1).all()
    assert out[0, 0, 3] < 10 and out[0, -1, 3] > 245


def test_model_output_used_at_its_native_scale() -> None:
    image = sample_rgb(40, 24)
    out = upscale(image, 4, model=nearest_x4)
    np.testing.assert_array_equal(out, image.repeat(4, axis=0).repeat(4, axis=1))


def test_model_output_resized_to_the_requested_scale() -> None:
    image = sample_rgb(40, 24)
    out = upscale(image, 2, model=nearest_x4)
    assert out.shape == (48, 80, 3)
    # Nearest x4 then an antialiased /2 lands close to a plain bicubic x2.
    plain = upscale(image, 2)
    assert np.abs(out.astype(int) - plain.astype(int)).mean() < 6


def test_model_alpha_comes_from_bicubic() -> None:
    image = np.dstack([sample_rgb(20, 10), np.full((10, 20), 33, np.uint8)])
    out = upscale(image, 3, model=nearest_x4)
    assert out.shape == (30, 60, 4)
    assert (out[..., 3] == 33).all()


def test_torchscript_model_from_the_store(tmp_path: Path) -> None:
    class NearestX2(torch.nn.Module):
        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return F.interpolate(image, scale_factor=2.0, mode="nearest")

    with warnings.catch_warnings():
        # torch marks torch.jit.script deprecated; the store loads TorchScript.
        warnings.filterwarnings(
            "ignore", message=r"`torch\.jit\.script` is deprecated", category=DeprecationWarning
        )
        torch.jit.script(NearestX2()).save(str(tmp_path / "x2.pt"))
    module = ModelStore(tmp_path, {"x2": "x2.pt"}, device="cpu").get("x2").module
    image = sample_rgb(17, 9)
    out = upscale(image, 2, model=module, device="cpu")
    np.testing.assert_array_equal(out, image.repeat(2, axis=0).repeat(2, axis=1))


@pytest.mark.parametrize(
    "bad",
    [
        lambda t: t[:, :, ::2, ::2],  # smaller than its input
        lambda t: t[:, :1].repeat(1, 1, 4, 4),  # one channel
        lambda t: t.numpy(),  # not a tensor
    ],
)
def test_model_returning_the_wrong_shape_is_a_model_error(bad: object) -> None:
    with pytest.raises(ModelError, match="upscale model returned") as info:
        upscale(sample_rgb(8, 8), 2, model=bad)  # type: ignore[arg-type]
    assert info.value.non_retryable


def test_output_over_the_pixel_cap_is_refused() -> None:
    with pytest.raises(ImageError, match=r"gives 256x192 \(49152 pixels\), over the cap of 40000"):
        upscale(sample_rgb(64, 48), 4, max_pixels=40_000)


def test_bad_arrays_are_refused() -> None:
    with pytest.raises(ImageError, match="uint8 RGB or RGBA"):
        upscale(np.zeros((8, 8), np.uint8), 2)
    with pytest.raises(ImageError, match="uint8 RGB or RGBA"):
        upscale(np.zeros((8, 8, 3), np.float32), 2)
