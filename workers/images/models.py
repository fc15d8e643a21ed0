"""TorchScript models, loaded by name from a model root and kept warm.

Security: a task names a model, never a path. Only names in the configured
map resolve, and only to a file that stays inside the root once symlinks and
``..`` are resolved. Files are loaded with ``torch.jit.load`` only: a
TorchScript archive is read by TorchScript's restricted deserialiser, while
``torch.load`` of a pickle could run arbitrary code, so it is never called.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from eventcore.errors import TaskError


class ModelError(TaskError):
    """A model cannot be found, loaded or run as configured. Never retryable:
    the same name fails the same way until an operator changes the config."""

    def __init__(self, message: str) -> None:
        super().__init__(message, non_retryable=True)


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"`` is CUDA when available, else the CPU; any other value is
    passed to :class:`torch.device`. Raises :class:`ModelError` for an unknown
    device or CUDA asked for where there is none."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ModelError(f"unknown torch device {device!r}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} asked for, but CUDA is not available")
    return resolved


class TorchScriptInpainter:
    """A LaMa-style TorchScript inpainting model as an ``(rgb, mask) -> rgb``
    callable on ``uint8`` arrays.

    The module takes an image ``float32 [1, 3, H, W]`` in [0, 1] and a mask
    ``float32 [1, 1, H, W]`` in {0, 1} and returns ``[1, 3, H, W]`` in [0, 1].
    Inputs are padded (mirrored at the bottom and right, as IOPaint pads) to
    a multiple of ``pad_mod`` and the output cropped back.
    """

    def __init__(
        self, module: torch.jit.ScriptModule, *, device: torch.device, pad_mod: int = 8
    ) -> None:
        self.module = module
        self.device = device
        self.pad_mod = pad_mod

    def __call__(self, rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Inpaint ``rgb`` (``uint8`` HxWx3) where ``mask`` (``uint8`` HxW) is above 127."""
        height, width = rgb.shape[:2]
        pad = ((0, -height % self.pad_mod), (0, -width % self.pad_mod))
        rgb = np.pad(rgb, (*pad, (0, 0)), mode="symmetric")
        mask = np.pad(mask, pad, mode="symmetric")
        with torch.inference_mode():
            image_t = torch.from_numpy(rgb).to(self.device).permute(2, 0, 1)[None]
            mask_t = torch.from_numpy(mask > 127).to(self.device)[None, None]
            out = self.module(image_t.float() / 255.0, mask_t.float())
            if out.ndim != 4 or tuple(out.shape[:2]) != (1, 3) or out.shape[2:] != rgb.shape[:2]:
                raise ModelError(
                    f"inpaint model returned shape {tuple(out.shape)}"
                    f" for input [1, 3, {rgb.shape[0]}, {rgb.shape[1]}]"
                )
            # Rounded rather than truncated (IOPaint truncates), so a pixel the
            # model passes through comes back exactly.
            out = (out[0, :, :height, :width].clamp(0, 1) * 255).round().to(torch.uint8)
            return out.permute(1, 2, 0).cpu().numpy()


class ModelStore:
    """Named TorchScript models under ``root``, each loaded on first use and
    then kept in memory.

    ``files`` maps each model name to a path relative to ``root``; that map,
    from the worker's config, is the whole list of what can be loaded.
    """

    def __init__(self, root: str | Path, files: Mapping[str, str], device: str = "auto") -> None:
        self.root = Path(root)
        self.files = dict(files)
        self.device = resolve_device(device)
        self._loaded: dict[str, TorchScriptInpainter] = {}
        # Tasks may run on several threads; a model is big, load it once.
        self._lock = threading.Lock()

    def resolve(self, name: str) -> Path:
        """The file of model ``name``. Raises :class:`ModelError` for a name not
        in the map, a path that leaves the root, or a missing file."""
        if name not in self.files:
            known = ", ".join(sorted(self.files)) or "none"
            raise ModelError(f"unknown model {name!r}; known models: {known}")
        relative = Path(self.files[name])
        if relative.is_absolute():
            raise ModelError(f"model {name!r}: path {str(relative)!r} must be relative to the root")
        root = self.root.resolve()
        # resolve() follows symlinks and "..", so what is checked is what is opened.
        path = (root / relative).resolve()
        if not path.is_relative_to(root):
            raise ModelError(f"model {name!r}: path {str(relative)!r} leads outside the model root")
        if not path.is_file():
            raise ModelError(f"model {name!r}: no file {str(relative)!r} in the model root")
        return path

    def get(self, name: str) -> TorchScriptInpainter:
        """Model ``name``, loaded onto the store's device on first use."""
        with self._lock:
            model = self._loaded.get(name)
            if model is None:
                model = TorchScriptInpainter(self._load(name), device=self.device)
                self._loaded[name] = model
            return model

    def warm(self) -> tuple[str, ...]:
        """Names of the models loaded so far."""
        with self._lock:
            return tuple(self._loaded)

    def _load(self, name: str) -> torch.jit.ScriptModule:
        path = self.resolve(name)
        try:
            with warnings.catch_warnings():
                # Recent torch releases mark TorchScript deprecated; it stays the format
                # here for the reason in the module docstring. Scoped to this
                # one message (catch_warnings is process-wide, but loads are
                # rare and serialised by the store's lock).
                warnings.filterwarnings(
                    "ignore",
                    message=r"`torch\.jit\.load` is deprecated",
                    category=DeprecationWarning,
                )
                module = torch.jit.load(str(path), map_location=self.device)
        except Exception as exc:  # torch raises RuntimeError, ValueError, ... for bad files
            # Messages name the configured relative path, never where the root is.
            reason = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise ModelError(
                f"model {name!r}: {self.files[name]!r} is not a TorchScript file ({reason})"
            ) from exc
        module.eval()
        return module
