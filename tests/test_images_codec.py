"""eventcore.images.codec: headers, the pixel cap, decoding, masks, base64, PNG out."""

from __future__ import annotations

import base64
import os
import struct
import subprocess
import sys
import zlib

import cv2
import numpy as np
import pytest

from eventcore.images import codec
from eventcore.images.codec import (
    DEFAULT_MAX_PIXELS,
    ImageError,
    b64_to_bytes,
    decode_image,
    decode_mask,
    encode_png,
    image_header,
)


def sample_rgb(width: int, height: int) -> np.ndarray:
    """A gradient with a disc, a bar and some text: RGB uint8."""
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    img = np.zeros((height, width, 3), np.uint8)
    img[..., 0] = x.astype(np.uint8)
    img[..., 1] = y.astype(np.uint8)
    img[..., 2] = ((x + y) / 2).astype(np.uint8)
    cv2.circle(img, (width // 3, height // 2), max(2, min(width, height) // 5), (250, 30, 30), -1)
    cv2.rectangle(img, (width // 2, height // 4), (width - 3, height // 3), (20, 200, 40), -1)
    cv2.putText(img, "Hi", (2, height - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1)
    return img


def encode(rgb: np.ndarray, ext: str, *params: int) -> bytes:
    if rgb.ndim == 3:
        code = cv2.COLOR_RGB2BGR if rgb.shape[2] == 3 else cv2.COLOR_RGBA2BGRA
        rgb = cv2.cvtColor(rgb, code)
    ok, buf = cv2.imencode(ext, rgb, list(params))
    assert ok
    return buf.tobytes()


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """``jpeg`` with an APP1 EXIF segment holding only the orientation tag."""
    tiff = b"MM\x00*\x00\x00\x00\x08" + struct.pack(">H", 1)
    tiff += struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + b"\x00" * 4
    body = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body + jpeg[2:]


SIZES = [(64, 48), (301, 97), (1, 1), (97, 300)]

FORMATS = {
    "png": (".png",),
    "jpeg": (".jpg", cv2.IMWRITE_JPEG_QUALITY, 90),
    "jpeg-progressive": (".jpg", cv2.IMWRITE_JPEG_PROGRESSIVE, 1),
    "webp-lossless": (".webp", cv2.IMWRITE_WEBP_QUALITY, 101),
    "webp-lossy": (".webp", cv2.IMWRITE_WEBP_QUALITY, 80),
    "bmp": (".bmp",),
}


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("kind", FORMATS)
def test_header_gives_the_real_size(kind: str, size: tuple[int, int]) -> None:
    data = encode(sample_rgb(*size), *FORMATS[kind])
    fmt, width, height = image_header(data)
    assert fmt == kind.split("-")[0]
    assert (width, height) == size
    assert decode_image(data).shape == (size[1], size[0], 3)


@pytest.mark.parametrize("ext", [".png", ".webp", ".bmp"])
def test_header_of_images_with_alpha(ext: str) -> None:
    rgba = np.dstack([sample_rgb(70, 33), np.full((33, 70), 90, np.uint8)])
    data = encode(rgba, ext, *([cv2.IMWRITE_WEBP_QUALITY, 80] if ext == ".webp" else []))
    if ext == ".webp":
        assert data[12:16] == b"VP8X"  # lossy with alpha needs the extended format
    assert image_header(data)[1:] == (70, 33)


def test_webp_chunk_kinds_are_all_covered() -> None:
    img = sample_rgb(50, 20)
    assert encode(img, ".webp", cv2.IMWRITE_WEBP_QUALITY, 80)[12:16] == b"VP8 "
    assert encode(img, ".webp", cv2.IMWRITE_WEBP_QUALITY, 101)[12:16] == b"VP8L"


def test_top_down_bmp() -> None:
    """A negative BMP height means rows run top-down; the size is its absolute value."""
    img = sample_rgb(40, 30)
    data = bytearray(encode(img, ".bmp"))
    (height,) = struct.unpack_from("<i", data, 22)
    struct.pack_into("<i", data, 22, -height)
    row = ((40 * 3 + 3) // 4) * 4
    offset = struct.unpack_from("<I", data, 10)[0]
    pixels = data[offset : offset + row * 30]
    flipped = b"".join(pixels[i * row : (i + 1) * row] for i in reversed(range(30)))
    data[offset : offset + row * 30] = flipped
    assert image_header(bytes(data)) == ("bmp", 40, 30)
    np.testing.assert_array_equal(decode_image(bytes(data)), img)


def test_jpeg_header_skips_segments_and_fill_bytes() -> None:
    jpeg = encode(sample_rgb(123, 45), ".jpg")
    comment = b"\xff\xfe" + struct.pack(">H", 7) + b"hello"
    padded = jpeg[:2] + comment + b"\xff\xff" + jpeg[2:]  # fill bytes before a marker
    assert image_header(with_exif_orientation(padded, 1)) == ("jpeg", 123, 45)


@pytest.fixture
def imdecode_forbidden(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("the decoder was reached")

    monkeypatch.setattr(codec.cv2, "imdecode", fail)
    monkeypatch.setattr(codec.cv2, "imdecodeWithMetadata", fail)


def test_png_decompression_bomb_refused_from_its_header(imdecode_forbidden: None) -> None:
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    bomb = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + os.urandom(64)
    with pytest.raises(ImageError) as info:
        decode_image(bomb)
    assert "100000x100000" in str(info.value)
    assert str(DEFAULT_MAX_PIXELS) in str(info.value)
    assert info.value.non_retryable
    with pytest.raises(ImageError, match="100000x100000"):
        decode_mask(bomb, (100_000, 100_000))


def test_jpeg_bomb_refused_from_its_frame_header(imdecode_forbidden: None) -> None:
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, 60_000, 60_000, 1) + b"\x01\x11\x00"
    bomb = b"\xff\xd8" + sof + b"\xff\xda" + os.urandom(64)
    with pytest.raises(ImageError, match="60000x60000"):
        decode_image(bomb)


def test_caller_cap_is_applied(imdecode_forbidden: None) -> None:
    data = encode(sample_rgb(64, 48), ".png")
    with pytest.raises(ImageError, match=r"64x48 \(3072 pixels\), over the cap of 3000"):
        decode_image(data, max_pixels=3000)


def test_opencv_cap_is_set_before_cv2_is_loaded() -> None:
    """The second line of defence: with the codec imported first, OpenCV itself
    refuses more than the default cap, even when a caller passes a larger
    ``max_pixels``. OpenCV reads the variable when cv2 loads, so this runs in a
    fresh interpreter rather than in this one, where cv2 may already be loaded."""
    side = 8200  # 67.2 MP, just over the 64 MP cap; all-zero rows compress to ~70 kB
    ihdr = png_chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
    packer = zlib.compressobj()
    row = b"\x00" * (side + 1)
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    data = b"\x89PNG\r\n\x1a\n" + ihdr + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")
    script = (
        "import sys\n"
        "from eventcore.images.codec import ImageError, decode_image\n"
        "try:\n"
        "    decode_image(sys.stdin.buffer.read(), max_pixels=10**9)\n"
        "except ImageError as exc:\n"
        "    print(exc)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_IO_MAX_IMAGE_PIXELS"}
    done = subprocess.run(
        [sys.executable, "-c", script], input=data, capture_output=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr.decode()
    assert "too large to decode" in done.stdout.decode()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello world, this is not an image",
        b"GIF89a" + b"\x00" * 32,
        b"II*\x00" + b"\x00" * 32,  # TIFF: OpenCV could decode it, the allow-list does not
        b"%PDF-1.7",
    ],
)
def test_other_bytes_are_refused(data: bytes, imdecode_forbidden: None) -> None:
    with pytest.raises(ImageError, match="mask: not a PNG, JPEG, WebP or BMP image"):
        image_header(data, "mask")


def test_real_tiff_is_refused(imdecode_forbidden: None) -> None:
    with pytest.raises(ImageError, match="not a PNG, JPEG, WebP or BMP"):
        decode_image(encode(sample_rgb(20, 20), ".tiff"))


@pytest.mark.parametrize(
    "data", [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0\x00", b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"BM"]
)
def test_truncated_headers_are_refused(data: bytes) -> None:
    with pytest.raises(ImageError, match="image: truncated or malformed"):
        image_header(data)


def test_corrupt_body_after_a_good_header() -> None:
    data = encode(sample_rgb(64, 48), ".png")
    with pytest.raises(ImageError, match="image: the image data is corrupt, truncated"):
        decode_image(data[:40] + bytes(len(data) - 40))


@pytest.mark.parametrize("ext", [".png", ".bmp", ".webp"])
def test_lossless_rgb_round_trip(ext: str) -> None:
    img = sample_rgb(77, 41)
    data = encode(img, ext, *([cv2.IMWRITE_WEBP_QUALITY, 101] if ext == ".webp" else []))
    np.testing.assert_array_equal(decode_image(data), img)


def test_rgba_round_trip_keeps_alpha() -> None:
    alpha = np.tile(np.linspace(0, 255, 90).astype(np.uint8), (60, 1))
    rgba = np.dstack([sample_rgb(90, 60), alpha])
    out = decode_image(encode_png(rgba))
    assert out.shape == (60, 90, 4)
    np.testing.assert_array_equal(out, rgba)


def test_grey_and_16_bit_become_8_bit_rgb() -> None:
    grey = cv2.cvtColor(sample_rgb(50, 40), cv2.COLOR_RGB2GRAY)
    out = decode_image(encode_png(grey))
    assert out.shape == (40, 50, 3)
    for channel in range(3):
        np.testing.assert_array_equal(out[..., channel], grey)
    deep = sample_rgb(50, 40).astype(np.uint16) * 257
    np.testing.assert_array_equal(decode_image(encode(deep, ".png")), sample_rgb(50, 40))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_like_opencv_and_iopaint(orientation: int) -> None:
    data = with_exif_orientation(encode(sample_rgb(60, 25), ".jpg"), orientation)
    upright = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB)
    out = decode_image(data)
    np.testing.assert_array_equal(out, upright)
    # The mask read from the same kind of file turns the same way, so they still match.
    mask = decode_mask(data, (out.shape[1], out.shape[0]))
    assert mask.shape == out.shape[:2]


def test_mask_of_another_size_is_refused() -> None:
    data = encode_png(np.zeros((30, 40), np.uint8))
    with pytest.raises(ImageError, match=r"^mask is 40x30 but image is 64x48$"):
        decode_mask(data, (64, 48))


def test_mask_is_thresholded_at_127() -> None:
    ramp = np.tile(np.arange(256, dtype=np.uint8), (3, 1))
    mask = decode_mask(encode_png(ramp), (256, 3))
    assert mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, np.where(ramp > 127, 255, 0))


def test_colour_mask_is_read_as_grey_and_alpha_ignored() -> None:
    rgba = np.zeros((10, 20, 4), np.uint8)
    rgba[:, :10] = (255, 255, 255, 0)  # white but transparent: still masked, as in IOPaint
    rgba[:, 10:] = (0, 0, 255, 255)  # opaque blue: luma 29, not masked
    mask = decode_mask(encode_png(rgba), (20, 10))
    assert (mask[:, :10] == 255).all()
    assert (mask[:, 10:] == 0).all()


def test_base64_plain_urlsafe_unpadded_and_data_url() -> None:
    blob = bytes(range(256)) * 3 + b"\xfb\xff"  # yields '+', '/' and padding when encoded
    std = base64.b64encode(blob).decode()
    assert "+" in std and "/" in std and std.endswith("=")
    assert b64_to_bytes(std) == blob
    assert b64_to_bytes(std.rstrip("=")) == blob
    assert b64_to_bytes(base64.urlsafe_b64encode(blob).decode().rstrip("=")) == blob
    assert b64_to_bytes("\n".join(std[i : i + 76] for i in range(0, len(std), 76))) == blob
    png = encode_png(sample_rgb(8, 8))
    url = "data:image/png;base64," + base64.b64encode(png).decode()
    assert b64_to_bytes(url) == png
    assert b64_to_bytes("DATA:application/octet-stream;base64," + std) == blob


@pytest.mark.parametrize(
    "text", ["", "   ", "abc$def", "A", "data:image/png,abcd", "data:image/png;base64,", "Zm9v!"]
)
def test_bad_base64_names_the_field(text: str) -> None:
    with pytest.raises(ImageError, match=r"^mask: ") as info:
        b64_to_bytes(text, "mask")
    assert info.value.non_retryable


def test_encode_png_refuses_what_it_cannot_write() -> None:
    with pytest.raises(ValueError, match="uint8"):
        encode_png(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="got \\(4, 4, 2\\)"):
        encode_png(np.zeros((4, 4, 2), np.uint8))
