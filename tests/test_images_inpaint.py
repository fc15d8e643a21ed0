"""workers.images.inpaint: IOPaint's HD strategies and the OpenCV inpainters."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from eventcore.errors import TaskError
from eventcore.images.codec import ImageError
from workers.images.inpaint import InpaintConfig, cv2_inpainter, inpaint


def sample_rgb(width: int, height: int) -> np.ndarray:
    """A gradient with a disc, a bar and some text: RGB uint8."""
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    img = np.zeros((height, width, 3), np.uint8)
    img[..., 0] = x.astype(np.uint8)
    img[..., 1] = y.astype(np.uint8)
    img[..., 2] = ((x + y) / 2).astype(np.uint8)
    cv2.circle(img, (width // 3, height // 2), min(width, height) // 5, (250, 30, 30), -1)
    cv2.rectangle(img, (width // 2, height // 4), (width - 3, height // 3), (20, 200, 40), -1)
    cv2.putText(img, "eventcore", (4, height - 8), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (255,) * 3, 2)
    return img


def text_mask(width: int, height: int) -> np.ndarray:
    """Masks the text drawn by :func:`sample_rgb`, as a user would to erase it."""
    mask = np.zeros((height, width), np.uint8)
    cv2.putText(mask, "eventcore", (4, height - 8), cv2.FONT_HERSHEY_SIMPLEX, 1.0, 255, 6)
    # Binary, as decode_mask makes it (OpenCV may anti-alias the strokes).
    return np.where(mask > 127, np.uint8(255), np.uint8(0))


def blobs_mask(width: int, height: int, centres: list[tuple[int, int]], r: int = 20) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    for centre in centres:
        cv2.circle(mask, centre, r, 255, -1, cv2.LINE_8)
    return mask


class Recorder:
    """A model that paints the hole a flat grey, and everything else noise, and
    remembers what it was given."""

    def __init__(self) -> None:
        self.calls: list[tuple[np.ndarray, np.ndarray]] = []
        self.rng = np.random.default_rng(7)

    def __call__(self, rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
        self.calls.append((rgb.copy(), mask.copy()))
        out = self.rng.integers(0, 256, rgb.shape, dtype=np.uint8)
        out[mask > 0] = 128
        return out


@pytest.mark.parametrize("flag", ["INPAINT_NS", "INPAINT_TELEA"])
@pytest.mark.parametrize("strategy", ["Original", "Crop", "Resize"])
def test_small_image_equals_a_direct_cv2_inpaint(flag: str, strategy: str) -> None:
    """Under the triggers every strategy runs the model on the whole image."""
    image, mask = sample_rgb(300, 200), text_mask(300, 200)
    config = InpaintConfig(cv2_flag=flag, cv2_radius=5, hd_strategy=strategy)
    out = inpaint(image, mask, config, cv2_inpainter(config))
    expected = cv2.inpaint(image, mask, 5, getattr(cv2, flag))
    np.testing.assert_array_equal(out, expected)
    # IOPaint hands OpenCV BGR; the channels are independent, so it is the same.
    bgr = cv2.inpaint(np.ascontiguousarray(image[..., ::-1]), mask, 5, getattr(cv2, flag))
    np.testing.assert_array_equal(out, bgr[..., ::-1])
    assert not np.array_equal(out, image)


def test_original_strategy_runs_whole_large_image_and_reports_once() -> None:
    image, mask = sample_rgb(1000, 900), blobs_mask(1000, 900, [(100, 100), (900, 800)])
    model, seen = Recorder(), []
    config = InpaintConfig(hd_strategy="Original")
    out = inpaint(image, mask, config, model, progress=lambda f, m: seen.append((f, m)))
    assert [c[0].shape for c in model.calls] == [(900, 1000, 3)]
    assert seen == [(1.0, "inpainted")]
    np.testing.assert_array_equal(out[mask == 0], image[mask == 0])
    assert (out[mask == 255] == 128).all()


def test_crop_runs_each_masked_region_with_its_margin() -> None:
    image = sample_rgb(1000, 900)
    mask = blobs_mask(1000, 900, [(500, 450), (60, 40), (975, 870)], r=20)
    model, seen = Recorder(), []
    config = InpaintConfig(hd_strategy="Crop", hd_strategy_crop_margin=100)
    out = inpaint(image, mask, config, model, progress=lambda f, m: seen.append((f, m)))

    assert seen == [(1 / 3, "crop 1/3"), (2 / 3, "crop 2/3"), (1.0, "crop 3/3")]
    # A 41 px disc plus 100 px each side; at an edge the window slides inward
    # rather than shrinking, so every crop keeps its full context.
    assert [c[0].shape for c in model.calls] == [(241, 241, 3)] * 3
    for crop, crop_mask in model.calls:
        assert crop_mask.any()
        # Each crop is cut from the original image (matchTemplate finds where).
        found = cv2.matchTemplate(image, crop, cv2.TM_SQDIFF)
        y, x = np.unravel_index(found.argmin(), found.shape)
        np.testing.assert_array_equal(image[y : y + 241, x : x + 241], crop)
        np.testing.assert_array_equal(mask[y : y + 241, x : x + 241], crop_mask)
    np.testing.assert_array_equal(out[mask == 0], image[mask == 0])
    assert (out[mask == 255] == 128).all()


def test_crop_with_cv2_changes_only_the_hole() -> None:
    image, mask = sample_rgb(1000, 900), text_mask(1000, 900)
    config = InpaintConfig(hd_strategy="Crop", cv2_flag="INPAINT_TELEA")
    out = inpaint(image, mask, config, cv2_inpainter(config))
    np.testing.assert_array_equal(out[mask == 0], image[mask == 0])
    assert not np.array_equal(out[mask == 255], image[mask == 255])


def test_overlapping_crops_keep_every_hole_filled() -> None:
    image = sample_rgb(1000, 900)
    mask = blobs_mask(1000, 900, [(400, 400), (440, 400)], r=25)  # touching discs: one box
    mask[100:110, 100:300] = 255  # a separate bar whose window overlaps nothing
    mask[130:140, 100:300] = 255  # and one whose window overlaps the bar's
    model = Recorder()
    out = inpaint(image, mask, InpaintConfig(hd_strategy="Crop"), model)
    assert len(model.calls) == 3
    np.testing.assert_array_equal(out[mask == 0], image[mask == 0])
    assert (out[mask == 255] == 128).all()


def test_resize_runs_a_smaller_copy_and_keeps_unmasked_pixels() -> None:
    image, mask = sample_rgb(1000, 900), blobs_mask(1000, 900, [(300, 300), (700, 600)], r=40)
    model, seen = Recorder(), []
    config = InpaintConfig(hd_strategy="Resize", hd_strategy_resize_limit=500)
    out = inpaint(image, mask, config, model, progress=lambda f, m: seen.append((f, m)))

    (small, small_mask), *rest = model.calls
    assert not rest
    assert small.shape == (450, 500, 3)
    assert set(np.unique(small_mask)) == {0, 255}  # the model sees a binary mask
    assert small_mask.sum() >= cv2.resize(mask, (500, 450), cv2.INTER_AREA).sum()
    assert seen == [(0.0, "resized to 500x450"), (1.0, "inpainted")]
    np.testing.assert_array_equal(out[mask == 0], image[mask == 0])
    inner = cv2.erode(mask, np.ones((9, 9), np.uint8)) == 255  # away from resampled edges
    assert (out[inner] == 128).all()


def test_resize_with_cv2_on_a_large_image() -> None:
    image, mask = sample_rgb(1000, 900), text_mask(1000, 900)
    config = InpaintConfig(hd_strategy="Resize", hd_strategy_resize_limit=640)
    out = inpaint(image, mask, config, cv2_inpainter(config))
    assert out.shape == image.shape
    np.testing.assert_array_equal(out[mask == 0], image[mask == 0])
    assert not np.array_equal(out[mask == 255], image[mask == 255])


@pytest.mark.parametrize("strategy", ["Original", "Crop", "Resize"])
def test_alpha_is_kept(strategy: str) -> None:
    size = (1000, 900) if strategy != "Original" else (200, 150)
    image = sample_rgb(*size)
    alpha = np.tile(np.linspace(0, 255, size[0]).astype(np.uint8), (size[1], 1))
    rgba = np.dstack([image, alpha])
    mask = text_mask(*size)
    config = InpaintConfig(hd_strategy=strategy, hd_strategy_resize_limit=600)
    out = inpaint(rgba, mask, config, cv2_inpainter(config))
    assert out.shape == rgba.shape
    np.testing.assert_array_equal(out[..., 3], alpha)
    np.testing.assert_array_equal(out[mask == 0], rgba[mask == 0])
    np.testing.assert_array_equal(out[..., :3], inpaint(image, mask, config, cv2_inpainter(config)))


def test_mask_is_thresholded_at_127() -> None:
    image = sample_rgb(120, 80)
    mask = np.zeros((80, 120), np.uint8)
    mask[10:20, 10:20] = 127  # not masked
    mask[40:50, 40:50] = 128  # masked
    model = Recorder()
    out = inpaint(image, mask, InpaintConfig(), model)
    np.testing.assert_array_equal(np.unique(model.calls[0][1]), [0, 255])
    np.testing.assert_array_equal(out[10:20, 10:20], image[10:20, 10:20])
    assert (out[40:50, 40:50] == 128).all()


def test_empty_mask_skips_the_model() -> None:
    image, model, seen = sample_rgb(64, 64), Recorder(), []
    out = inpaint(
        image,
        np.zeros((64, 64), np.uint8),
        InpaintConfig(),
        model,
        progress=lambda f, m: seen.append(f),
    )
    np.testing.assert_array_equal(out, image)
    assert out is not image and not model.calls and seen == [1.0]


def test_inputs_are_not_modified() -> None:
    image, mask = sample_rgb(1000, 900), text_mask(1000, 900)
    before = image.copy(), mask.copy()
    for strategy in ("Original", "Crop", "Resize"):
        inpaint(image, mask, InpaintConfig(hd_strategy=strategy), Recorder())
    np.testing.assert_array_equal(image, before[0])
    np.testing.assert_array_equal(mask, before[1])


def test_mask_of_another_size_is_refused() -> None:
    with pytest.raises(ImageError, match=r"^mask is 40x30 but image is 64x48$"):
        inpaint(sample_rgb(64, 48), np.zeros((30, 40), np.uint8), InpaintConfig(), Recorder())


def test_model_breaking_its_contract_is_not_retried() -> None:
    def bad(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return rgb[:-1]

    with pytest.raises(TaskError, match="inpaint model returned uint8 \\(47, 64, 3\\)") as info:
        inpaint(sample_rgb(64, 48), blobs_mask(64, 48, [(30, 20)], 5), InpaintConfig(), bad)
    assert info.value.non_retryable


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"cv2_flag": "INPAINT_FAST"}, "cv2_flag 'INPAINT_FAST' is not one of"),
        ({"hd_strategy": "crop"}, "hd_strategy 'crop' is not one of Crop, Resize, Original"),
        ({"cv2_radius": 0}, "cv2_radius is 0, must be between 1 and 100"),
        ({"hd_strategy_crop_margin": -1}, "hd_strategy_crop_margin is -1"),
        ({"hd_strategy_resize_limit": 10}, "hd_strategy_resize_limit is 10"),
        ({"cv2_radius": "4"}, "cv2_radius"),
        ({"hd_strategy": None}, "hd_strategy"),
    ],
)
def test_bad_settings_are_refused(params: dict[str, object], message: str) -> None:
    with pytest.raises(ImageError, match=message) as info:
        InpaintConfig.from_params(params)
    assert info.value.non_retryable


def test_unknown_flag_refused_when_used_directly() -> None:
    config = InpaintConfig(cv2_flag="INPAINT_FAST")
    with pytest.raises(ImageError, match="cv2_flag"):
        cv2_inpainter(config)
    with pytest.raises(ImageError, match="hd_strategy"):
        inpaint(
            sample_rgb(8, 8), np.zeros((8, 8), np.uint8), InpaintConfig(hd_strategy="x"), Recorder()
        )


def test_from_params_ignores_unknown_keys_and_keeps_defaults() -> None:
    params = {
        "image": "data:image/png;base64,....",
        "mask": "....",
        "prompt": "a cat",
        "sd_steps": 50,
        "cv2_flag": "INPAINT_TELEA",
        "hd_strategy_crop_margin": 64,
    }
    config = InpaintConfig.from_params(params)
    assert config == InpaintConfig(cv2_flag="INPAINT_TELEA", hd_strategy_crop_margin=64)
    assert InpaintConfig.from_params({}) == InpaintConfig()
    assert InpaintConfig() == InpaintConfig(
        cv2_flag="INPAINT_NS",
        cv2_radius=4,
        hd_strategy="Crop",
        hd_strategy_crop_margin=128,
        hd_strategy_crop_trigger_size=800,
        hd_strategy_resize_limit=1280,
    )
