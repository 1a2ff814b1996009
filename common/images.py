"""Decode image bytes into model input, refusing bad input with a reason a person can read."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ris.common.errors import ImageError

# We enforce our own pixel limit (ImageError) before decoding; PIL's would only warn below 2x.
Image.MAX_IMAGE_PIXELS = None


@dataclass(frozen=True)
class DecodedImage:
    """An upright RGB image ready for the model, with the original's size."""

    pixels: np.ndarray  # uint8 (S, S, 3), RGB
    width: int
    height: int


def open_rgb(data: bytes, max_pixels: int, target: int | None = None) -> Image.Image:
    """Open ``data`` as an upright RGB image; ``target`` lets JPEGs decode at reduced scale."""
    if not data:
        raise ImageError("empty file (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError("not an image (unrecognised format)") from None
    except Exception as exc:
        raise ImageError(f"cannot read image header: {exc}") from None
    width, height = img.size
    if width * height > max_pixels:
        raise ImageError(
            f"image too large: {width}x{height} = {width * height:,} pixels "
            f"exceeds the limit of {max_pixels:,} (possible decompression bomb)"
        )
    try:
        if target and img.format == "JPEG":
            # Decode JPEGs at 1/2..1/8 scale (never below target): the DCT does the first,
            # anti-aliased part of the downscale, in bounded memory and at a fraction of the CPU.
            img.draft("RGB", (target, target))
        ImageOps.exif_transpose(img, in_place=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _to_rgb(img)
    except ImageError:
        raise
    except Exception as exc:  # PIL raises many types for corrupt data
        raise ImageError(f"corrupt or truncated image: {exc}") from None


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # High-bit-depth greyscale: scale to 8 bits instead of letting PIL clip.
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        img = Image.fromarray(arr.astype(np.uint8))
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        # Transparent pixels become white, as a viewer would show them on a page.
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
        return background
    if img.mode != "RGB":
        img = img.convert("RGB")
    img.load()
    return img


def preprocess(img: Image.Image, size: int) -> np.ndarray:
    """Resize the whole image to ``size``² (no crop: borders matter for near-duplicates).

    The result stays uint8: a quarter of float32's bytes between processes and to a GPU, where
    :func:`normalise` (or the GPU itself) turns it into model input.
    """
    resized = img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
    return np.asarray(resized, dtype=np.uint8)


def normalise(
    batch: np.ndarray, mean: tuple[float, float, float], std: tuple[float, float, float]
) -> np.ndarray:
    """uint8 ``(N, S, S, 3)`` images to the model's float32 ``(N, 3, S, S)`` input."""
    arr = (batch.astype(np.float32) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(arr.transpose(0, 3, 1, 2))


def decode(data: bytes, size: int, max_pixels: int) -> DecodedImage:
    """Bytes to an upright RGB ``(size, size, 3)`` uint8 array; raises ImageError with the
    reason."""
    img = open_rgb(data, max_pixels, target=size)
    # exif_transpose may swap the sides; report the upright size.
    width, height = _original_size(data, img)
    return DecodedImage(preprocess(img, size), width, height)


def _original_size(data: bytes, upright: Image.Image) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as probe:
        w, h = probe.size
        orientation = probe.getexif().get(0x0112, 1)
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)
