"""Image bytes in, arrays out, and back: the only place untrusted image bytes are decoded.

Every decode checks the size the header claims against a pixel cap before any
decoder sees the data, and only PNG, JPEG, WebP and BMP are accepted, so a
decompression bomb or an exotic codec (TIFF, EXR, JPEG 2000...) never reaches
OpenCV. Arrays are RGB(A) ``uint8``; the BGR(A) order OpenCV uses stays inside
this module.

It also holds ``InpaintConfig``, the settings an ``inpaint`` task's params may
carry. Workers decode and inpaint with them; the web app checks the same
settings and image headers before it submits, so both apply one set of rules.
Nothing here imports torch.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
import struct
import sys
from collections.abc import Mapping
from typing import Any

import msgspec
import numpy as np

from eventcore.errors import TaskError

DEFAULT_MAX_PIXELS = 64 * 1024 * 1024
"""Largest image (width * height) decoded by default: 64 megapixels."""

logger = logging.getLogger(__name__)

# OpenCV's own cap (default 2**30 pixels) is the second line of defence behind
# the header check below. OpenCV reads the variable once, when cv2 is loaded,
# so it must be in the environment before the first `import cv2` anywhere in
# the process; setdefault lets an operator choose another value.
if "cv2" in sys.modules and "OPENCV_IO_MAX_IMAGE_PIXELS" not in os.environ:
    logger.warning(
        "cv2 was imported before %s: OpenCV's pixel cap stays at its default;"
        " the header check still applies",
        __name__,
    )
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(DEFAULT_MAX_PIXELS))

import cv2  # noqa: E402  (must come after the environment variable above)


class ImageError(TaskError):
    """The image or mask a task was given is unusable. Never retryable: the
    same bytes fail the same way every time."""

    def __init__(self, message: str) -> None:
        super().__init__(message, non_retryable=True)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# SOFn markers carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) share the range.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers without a length field.
_JPEG_STANDALONE = frozenset([0x01, *range(0xD0, 0xD8)])


def image_header(data: bytes, what: str = "image") -> tuple[str, int, int]:
    """``(format, width, height)`` read from the header of PNG, JPEG, WebP or BMP
    bytes, without decoding the pixels. ``format`` is "png", "jpeg", "webp" or "bmp".

    Raises :class:`ImageError` naming ``what`` for any other bytes, a truncated
    header or a zero size.
    """
    try:
        fmt, width, height = _parse_header(data)
    except (struct.error, IndexError):
        raise ImageError(f"{what}: truncated or malformed image header") from None
    if fmt is None:
        raise ImageError(f"{what}: not a PNG, JPEG, WebP or BMP image")
    if width <= 0 or height <= 0:
        raise ImageError(f"{what}: {fmt} header gives an empty size {width}x{height}")
    return fmt, width, height


def _parse_header(data: bytes) -> tuple[str | None, int, int]:
    if data.startswith(_PNG_SIGNATURE):
        if data[12:16] != b"IHDR":
            raise IndexError
        width, height = struct.unpack(">II", data[16:24])
        return "png", width, height
    if data.startswith(b"\xff\xd8"):
        return _jpeg_header(data)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_header(data)
    if data[:2] == b"BM":
        (dib_size,) = struct.unpack("<I", data[14:18])
        if dib_size == 12:  # OS/2 BITMAPCOREHEADER: 16-bit unsigned sizes
            width, height = struct.unpack("<HH", data[18:22])
        else:
            width, height = struct.unpack("<ii", data[18:26])
        # A negative height means rows are stored top-down.
        return "bmp", width, abs(height)
    return None, 0, 0


def _jpeg_header(data: bytes) -> tuple[str, int, int]:
    pos = 2
    while True:
        if data[pos] != 0xFF:
            raise IndexError
        while data[pos] == 0xFF:  # fill bytes may pad any marker
            pos += 1
        marker = data[pos]
        pos += 1
        if marker in _JPEG_STANDALONE:
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame
            raise IndexError
        (length,) = struct.unpack(">H", data[pos : pos + 2])
        if marker in _JPEG_SOF:
            height, width = struct.unpack(">HH", data[pos + 3 : pos + 7])
            return "jpeg", width, height
        if length < 2:
            raise IndexError
        pos += length


def _webp_header(data: bytes) -> tuple[str, int, int]:
    chunk = data[12:16]
    if chunk == b"VP8 ":  # lossy: 3-byte frame tag, start code, 14-bit sizes
        if data[23:26] != b"\x9d\x01\x2a":
            raise IndexError
        width, height = struct.unpack("<HH", data[26:30])
        return "webp", width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":  # lossless: signature byte, then 14-bit (size - 1) fields
        if data[20] != 0x2F:
            raise IndexError
        (bits,) = struct.unpack("<I", data[21:25])
        return "webp", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":  # extended: 24-bit (canvas size - 1) fields
        if len(data) < 30:
            raise IndexError
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return "webp", width, height
    raise IndexError


def _check_size(data: bytes, what: str, max_pixels: int) -> tuple[int, int]:
    fmt, width, height = image_header(data, what)
    if width * height > max_pixels:
        raise ImageError(
            f"{what}: {fmt} image is {width}x{height} ({width * height} pixels),"
            f" over the cap of {max_pixels} pixels"
        )
    return width, height


# EXIF orientation (tag 0x0112) -> how to turn the stored pixels upright, as
# browsers and IOPaint (PIL's exif_transpose) do.
_ORIENT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: a.swapaxes(0, 1)[:, ::-1],
    7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
    8: lambda a: a.swapaxes(0, 1)[::-1],
}


def _exif_orientation(exif: bytes) -> int:
    """The orientation tag of a TIFF-structured EXIF block, 1 if absent or unreadable."""
    exif = exif.removeprefix(b"Exif\x00\x00")
    try:
        order = {b"II": "<", b"MM": ">"}[exif[:2]]
        (ifd,) = struct.unpack(order + "I", exif[4:8])
        (count,) = struct.unpack(order + "H", exif[ifd : ifd + 2])
        for i in range(count):
            entry = ifd + 2 + 12 * i
            tag, kind = struct.unpack(order + "HH", exif[entry : entry + 4])
            if tag == 0x0112 and kind == 3:  # SHORT
                (value,) = struct.unpack(order + "H", exif[entry + 8 : entry + 10])
                return value
    except (KeyError, struct.error):
        pass
    return 1


def _imdecode(data: bytes, flags: int, what: str) -> np.ndarray:
    # OpenCV applies EXIF orientation only for some flags (never for
    # IMREAD_UNCHANGED), so it is told to ignore it and it is applied here, the
    # same way for images and masks: a phone photo and the mask drawn over it
    # in a browser then agree.
    buf = np.frombuffer(data, dtype=np.uint8)
    try:
        arr, kinds, blobs = cv2.imdecodeWithMetadata(buf, flags | cv2.IMREAD_IGNORE_ORIENTATION)
    except cv2.error:  # OpenCV raises (rather than returning None) for its own size caps
        arr = None
    if arr is None or arr.size == 0:
        raise ImageError(f"{what}: the image data is corrupt, truncated or too large to decode")
    # kinds comes back as a numpy array (or None): test it against None, not for truth.
    for kind, blob in zip(() if kinds is None else kinds, () if blobs is None else blobs):
        if kind == cv2.IMAGE_METADATA_EXIF:
            turn = _ORIENT.get(_exif_orientation(np.asarray(blob).tobytes()))
            if turn is not None:
                arr = np.ascontiguousarray(turn(arr))
    return arr


def decode_image(
    data: bytes, *, what: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Decode PNG/JPEG/WebP/BMP bytes to ``uint8`` RGB ``(H, W, 3)`` or RGBA ``(H, W, 4)``.

    Grey images become RGB, 16-bit samples are scaled to 8 bits, an EXIF
    orientation is applied. The header is checked against ``max_pixels``
    before anything is decoded. Raises :class:`ImageError` naming ``what``.
    """
    _check_size(data, what, max_pixels)
    arr = _imdecode(data, cv2.IMREAD_UNCHANGED, what)
    if arr.dtype == np.uint16:
        arr = np.round(arr / 257.0).astype(np.uint8)  # 65535 -> 255 exactly
    elif arr.dtype != np.uint8:
        raise ImageError(f"{what}: unsupported sample type {arr.dtype}")
    channels = 1 if arr.ndim == 2 else arr.shape[2]
    if channels == 1:
        return cv2.cvtColor(arr, cv2.COLOR_GRAY2RGB)
    if channels == 3:
        return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
    if channels == 4:
        return cv2.cvtColor(arr, cv2.COLOR_BGRA2RGBA)
    raise ImageError(f"{what}: unsupported channel count {channels}")


def decode_mask(
    data: bytes, size: tuple[int, int], *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Decode a mask to ``uint8`` ``(H, W)`` holding only 0 and 255.

    As IOPaint does, the mask is read as grey (colour converted to luma, an
    alpha channel ignored) and pixels above 127 become 255 (inpaint), the rest
    0 (keep). ``size`` is the image's ``(width, height)``; a mask of another
    size raises :class:`ImageError`.
    """
    _check_size(data, "mask", max_pixels)
    mask = _imdecode(data, cv2.IMREAD_GRAYSCALE, "mask")
    height, width = mask.shape[:2]
    if (width, height) != tuple(size):
        raise ImageError(f"mask is {width}x{height} but image is {size[0]}x{size[1]}")
    return np.where(mask > 127, np.uint8(255), np.uint8(0))


_DATA_URL = re.compile(r"data:[^,]*?;base64,", re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")


def b64_to_bytes(text: str, what: str = "image") -> bytes:
    """The bytes of a base64 string or a ``data:...;base64,`` URL.

    Standard and URL-safe alphabets are accepted, missing ``=`` padding and
    line breaks are tolerated. Raises :class:`ImageError` naming ``what``.
    """
    text = text.strip()
    if text[:5].lower() == "data:":
        header = _DATA_URL.match(text)
        if header is None:
            raise ImageError(f"{what}: a data URL must be ';base64,' encoded")
        text = text[header.end() :]
    text = _WHITESPACE.sub("", text).rstrip("=")
    if not text:
        raise ImageError(f"{what}: empty base64 data")
    altchars = b"-_" if ("-" in text or "_" in text) else None
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars, validate=True)
    except (binascii.Error, ValueError):
        raise ImageError(f"{what}: not valid base64") from None


def encode_png(arr: np.ndarray) -> bytes:
    """PNG bytes of a ``uint8`` grey ``(H, W)``, RGB or RGBA array."""
    if arr.dtype != np.uint8:
        raise ValueError(f"encode_png needs uint8 samples, got {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGBA2BGRA)
    elif not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 1)):
        raise ValueError(f"encode_png needs (H, W), (H, W, 3) or (H, W, 4), got {arr.shape}")
    ok, buf = cv2.imencode(".png", arr)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {arr.shape} array as PNG")
    return buf.tobytes()


# -- the settings of an inpaint task ----------------------------------------------

CV2_FLAGS = ("INPAINT_NS", "INPAINT_TELEA")
_STRATEGIES = ("Crop", "Resize", "Original")
# (low, high) for each integer setting. IOPaint sets no bounds; these keep a
# request from asking for absurd work (a 10,000 px inpaint radius) or nonsense.
_RANGES = {
    "cv2_radius": (1, 100),
    "hd_strategy_crop_margin": (0, 4096),
    "hd_strategy_crop_trigger_size": (64, 65536),
    "hd_strategy_resize_limit": (64, 65536),
}


class InpaintConfig(msgspec.Struct, frozen=True, kw_only=True):
    """The inpainting settings of an IOPaint request, with IOPaint's defaults.

    ``hd_strategy`` decides how a large image reaches the model:
    "Original" passes it whole; "Crop" (when the longer side exceeds
    ``hd_strategy_crop_trigger_size``) passes each masked region with
    ``hd_strategy_crop_margin`` pixels of context; "Resize" (when the longer
    side exceeds ``hd_strategy_resize_limit``) passes a copy scaled down to
    that limit and scales the result back up.
    """

    cv2_flag: str = "INPAINT_NS"
    cv2_radius: int = 4
    hd_strategy: str = "Crop"
    hd_strategy_crop_margin: int = 128
    hd_strategy_crop_trigger_size: int = 800
    hd_strategy_resize_limit: int = 1280

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> InpaintConfig:
        """The config held in a task's params; keys it does not know (the image,
        the mask, a prompt...) are ignored, as IOPaint ignores them. Raises
        :class:`ImageError` for a wrong type or value."""
        known = {k: v for k, v in params.items() if k in cls.__struct_fields__}
        try:
            config = msgspec.convert(known, cls)
        except msgspec.ValidationError as exc:
            raise ImageError(f"inpaint settings: {exc}") from None
        config.validate()
        return config

    def validate(self) -> None:
        """Raise :class:`ImageError` naming the first setting out of range."""
        if self.cv2_flag not in CV2_FLAGS:
            raise ImageError(f"cv2_flag {self.cv2_flag!r} is not one of {', '.join(CV2_FLAGS)}")
        if self.hd_strategy not in _STRATEGIES:
            raise ImageError(
                f"hd_strategy {self.hd_strategy!r} is not one of {', '.join(_STRATEGIES)}"
            )
        for name, (low, high) in _RANGES.items():
            value = getattr(self, name)
            if not low <= value <= high:
                raise ImageError(f"{name} is {value}, must be between {low} and {high}")
