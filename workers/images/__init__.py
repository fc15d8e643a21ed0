"""Pure image functions for the "inpaint" and "upscale" task kinds: decoding
untrusted bytes safely, IOPaint-style inpainting, TorchScript models and
upscaling. numpy, OpenCV and torch only; fetching blobs and talking to Redis
is the caller's business."""

# codec comes first: it sets OpenCV's pixel cap before the others import cv2.
from eventcore.images.codec import (
    DEFAULT_MAX_PIXELS,
    ImageError,
    b64_to_bytes,
    decode_image,
    decode_mask,
    encode_png,
    image_header,
)
from workers.images.inpaint import InpaintConfig, cv2_inpainter, inpaint
from workers.images.models import ModelError, ModelStore, TorchScriptInpainter, resolve_device
from workers.images.upscale import upscale

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ImageError",
    "InpaintConfig",
    "ModelError",
    "ModelStore",
    "TorchScriptInpainter",
    "b64_to_bytes",
    "cv2_inpainter",
    "decode_image",
    "decode_mask",
    "encode_png",
    "image_header",
    "inpaint",
    "resolve_device",
    "upscale",
]
