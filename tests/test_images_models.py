"""workers.images.models: TorchScript models by name, under a root, kept warm."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from workers.images.inpaint import InpaintConfig, inpaint
from workers.images.models import ModelError, ModelStore, TorchScriptInpainter, resolve_device


class HalfGreyFill(torch.nn.Module):
    """LaMa's TorchScript signature; fills the hole with 0.5 and insists, as LaMa
    does, on sizes that are multiples of 8."""

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if image.shape[2] % 8 != 0 or image.shape[3] % 8 != 0:
            raise RuntimeError("image is not padded to a multiple of 8")
        return image * (1 - mask) + mask * 0.5


def save_script(module: torch.nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():
        # torch marks torch.jit.script deprecated; TorchScript is what the
        # store loads, so the test builds its models that way.
        warnings.filterwarnings(
            "ignore", message=r"`torch\.jit\.script` is deprecated", category=DeprecationWarning
        )
        torch.jit.script(module).save(str(path))
    return path


def sample_rgb(width: int, height: int) -> np.ndarray:
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    img = np.dstack([np.broadcast_to(x, (height, width)), np.broadcast_to(y, (height, width))])
    img = np.dstack([img, (x + y) / 2]).astype(np.uint8)
    cv2.putText(img, "ok", (2, height - 3), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1)
    return img


@pytest.fixture
def root(tmp_path: Path) -> Path:
    models = tmp_path / "models"
    (models / "lama").mkdir(parents=True)
    save_script(HalfGreyFill(), models / "lama" / "big-lama.pt")
    return models


@pytest.fixture
def store(root: Path) -> ModelStore:
    return ModelStore(root, {"lama": "lama/big-lama.pt"}, device="cpu")


@pytest.mark.parametrize("size", [(64, 48), (37, 53), (1, 1), (129, 7)])
def test_loaded_by_name_and_run_with_padding(store: ModelStore, size: tuple[int, int]) -> None:
    width, height = size
    image = sample_rgb(width, height)
    mask = np.zeros((height, width), np.uint8)
    mask[: height // 2 + 1, : width // 2 + 1] = 255
    out = store.get("lama")(image, mask)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert (out[mask == 255] == 128).all()  # 0.5 * 255 = 127.5, rounded
    np.testing.assert_array_equal(out[mask == 0], image[mask == 0])


def test_loaded_once_and_reported_warm(store: ModelStore, monkeypatch: pytest.MonkeyPatch) -> None:
    loads = []
    real_load = torch.jit.load
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    assert store.warm() == ()
    first = store.get("lama")
    assert store.get("lama") is first
    assert len(loads) == 1
    assert store.warm() == ("lama",)
    assert isinstance(first, TorchScriptInpainter)
    assert first.device == torch.device("cpu")
    assert not first.module.training


def test_resolve_gives_the_file_under_the_root(store: ModelStore, root: Path) -> None:
    assert store.resolve("lama") == (root / "lama" / "big-lama.pt").resolve()


def test_unknown_name_lists_the_known_ones(store: ModelStore) -> None:
    with pytest.raises(ModelError, match="unknown model 'mat'; known models: lama") as info:
        store.get("mat")
    assert info.value.non_retryable
    with pytest.raises(ModelError, match="known models: none"):
        ModelStore(store.root, {}).resolve("lama")


def test_paths_leaving_the_root_are_refused(root: Path, tmp_path: Path) -> None:
    outside = save_script(HalfGreyFill(), tmp_path / "outside.pt")
    (root / "escape.pt").symlink_to(outside)
    (root / "inside.pt").symlink_to(root / "lama" / "big-lama.pt")
    files = {
        "up": "../outside.pt",
        "deep": "lama/../../outside.pt",
        "absolute": str(outside),
        "link": "escape.pt",
        "ok-link": "inside.pt",
        "missing": "lama/nope.pt",
        "dir": "lama",
    }
    store = ModelStore(root, files, device="cpu")
    for name in ("up", "deep", "link"):
        with pytest.raises(ModelError, match=f"model '{name}': .* leads outside the model root"):
            store.get(name)
    with pytest.raises(ModelError, match="must be relative to the root"):
        store.get("absolute")
    for name in ("missing", "dir"):
        with pytest.raises(ModelError, match="no file"):
            store.get(name)
    assert store.warm() == ()
    assert store.resolve("ok-link") == (root / "lama" / "big-lama.pt").resolve()
    store.get("ok-link")
    assert store.warm() == ("ok-link",)


def test_messages_do_not_reveal_where_the_root_is(root: Path) -> None:
    store = ModelStore(root, {"x": "../x.pt", "y": "y.pt"})
    for name in ("x", "y"):
        with pytest.raises(ModelError) as info:
            store.get(name)
        assert str(root) not in str(info.value)


def test_pickles_and_garbage_are_refused_without_unpickling(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch.load must never be called")

    monkeypatch.setattr(torch, "load", forbidden)
    torch.save({"state_dict": {"w": torch.zeros(2)}}, root / "checkpoint.pt")
    (root / "raw.pkl").write_bytes(pickle.dumps({"w": [1, 2, 3]}))
    (root / "garbage.pt").write_bytes(b"\x00garbage" * 100)
    (root / "empty.pt").write_bytes(b"")
    files = {n: n for n in ("checkpoint.pt", "raw.pkl", "garbage.pt", "empty.pt")}
    store = ModelStore(root, files, device="cpu")
    for name in files:
        with pytest.raises(ModelError, match=f"'{name}' is not a TorchScript file") as info:
            store.get(name)
        assert info.value.non_retryable
    assert store.warm() == ()


def test_wrong_output_shape_is_a_model_error(root: Path) -> None:
    class Shrinks(torch.nn.Module):
        def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return image[:, :, 1:]

    save_script(Shrinks(), root / "shrinks.pt")
    model = ModelStore(root, {"s": "shrinks.pt"}, device="cpu").get("s")
    with pytest.raises(ModelError, match=r"returned shape \(1, 3, 7, 8\) for input \[1, 3, 8, 8\]"):
        model(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8))


def test_drives_inpaint_with_the_crop_strategy(store: ModelStore) -> None:
    image = sample_rgb(1000, 900)
    mask = np.zeros((900, 1000), np.uint8)
    cv2.circle(mask, (123, 456), 30, 255, -1, cv2.LINE_8)
    cv2.rectangle(mask, (700, 80), (763, 95), 255, -1)  # odd-sized: crops are padded
    out = inpaint(image, mask, InpaintConfig(), store.get("lama"))
    assert (out[mask == 255] == 128).all()
    np.testing.assert_array_equal(out[mask == 0], image[mask == 0])


def test_devices() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto") == torch.device(expected)
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ModelError, match="unknown torch device 'gpu0'"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="CUDA is not available"):
            ModelStore("/nonexistent", {}, device="cuda")
