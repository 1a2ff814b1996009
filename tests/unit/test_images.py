"""Decoding real and hostile images: every bad one is refused with a reason, none crashes."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ris.common.images import DecodedImage, ImageError, decode, normalise, open_rgb
from ris.common.models import get_spec

SPEC = get_spec("efficientnet-lite0")
LIMIT = 100_000_000


def _decode(data: bytes, max_pixels: int = LIMIT) -> DecodedImage:
    return decode(data, SPEC.input_size, max_pixels)


def _encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def chelsea(photos: Path) -> Image.Image:
    with Image.open(photos / "chelsea.png") as img:
        return img.convert("RGB")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"\x00" * 1000, "not an image"),
        (b"hello, this is text\n" * 20, "not an image"),
        (bytes(range(256)) * 64, "not an image"),
    ],
)
def test_garbage_is_refused_with_reason(data: bytes, reason: str) -> None:
    with pytest.raises(ImageError, match=reason):
        _decode(data)


def test_truncated_jpeg_is_refused(chelsea: Image.Image) -> None:
    data = _encode(chelsea, "JPEG")
    with pytest.raises(ImageError, match="corrupt or truncated"):
        _decode(data[: len(data) // 2])


def test_decompression_bomb_is_refused_before_decoding() -> None:
    # A 12000x12000 PNG of one colour is a few KB but 144M pixels decoded.
    data = _encode(Image.new("1", (12000, 12000)), "PNG")
    assert len(data) < 100_000
    with pytest.raises(ImageError, match="decompression bomb"):
        _decode(data, max_pixels=100_000_000)


def test_huge_valid_jpeg_is_downscaled(chelsea: Image.Image) -> None:
    big = chelsea.resize((8000, 5300))
    out = _decode(_encode(big, "JPEG", quality=80))
    assert out.pixels.shape == (SPEC.input_size, SPEC.input_size, 3)
    assert out.pixels.dtype == np.uint8
    assert (out.width, out.height) == (8000, 5300)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of two images as the model sees them (normalised, so centred on zero)."""
    a, b = (normalise(x[None], SPEC.mean, SPEC.std).ravel() for x in (a, b))
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize(
    "variant",
    ["cmyk_jpeg", "webp", "palette_png", "grey", "gif", "rgba_png"],
)
def test_other_formats_decode_to_the_same_picture(chelsea: Image.Image, variant: str) -> None:
    source = chelsea.convert("L").convert("RGB") if variant == "grey" else chelsea
    reference = _decode(_encode(source, "PNG")).pixels
    data = {
        "cmyk_jpeg": lambda: _encode(chelsea.convert("CMYK"), "JPEG", quality=95),
        "webp": lambda: _encode(chelsea, "WEBP", quality=90),
        "palette_png": lambda: _encode(chelsea.quantize(256), "PNG"),
        "grey": lambda: _encode(chelsea.convert("L"), "PNG"),
        "gif": lambda: _encode(chelsea.quantize(256), "GIF"),
        "rgba_png": lambda: _encode(chelsea.convert("RGBA"), "PNG"),
    }[variant]()
    out = _decode(data)
    assert out.pixels.shape == reference.shape
    assert _cos(out.pixels, reference) > 0.97


def test_sixteen_bit_png_is_scaled_not_clipped() -> None:
    ramp = (np.arange(256 * 256, dtype=np.uint32).reshape(256, 256) * 1).astype(np.uint16)
    img = open_rgb(_encode(Image.fromarray(ramp), "PNG"), LIMIT)
    arr = np.asarray(img)
    assert arr.dtype == np.uint8 and arr.min() == 0 and arr.max() == 255
    assert len(np.unique(arr[..., 0])) > 200  # a ramp, not a saturated block


def test_transparent_palette_png_composites_on_white() -> None:
    img = Image.new("P", (64, 64), 0)
    img.putpalette([255, 0, 0] + [0, 0, 0] * 255)
    img.info["transparency"] = 0
    rgb = open_rgb(_encode(img, "PNG", transparency=0), LIMIT)
    assert rgb.getpixel((10, 10)) == (255, 255, 255)


def test_animated_gif_uses_first_frame() -> None:
    frames = [Image.new("RGB", (64, 64), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100)
    rgb = open_rgb(buf.getvalue(), LIMIT)
    r, _, b = rgb.getpixel((5, 5))
    assert r > 200 and b < 50


def test_exif_rotated_photo_is_embedded_upright(chelsea: Image.Image) -> None:
    # Store the pixels rotated, with an EXIF tag saying "rotate 90 CW to display".
    stored = chelsea.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _encode(stored, "JPEG", quality=95, exif=exif.tobytes())
    upright = _decode(_encode(chelsea, "JPEG", quality=95))
    out = _decode(data)
    assert (out.width, out.height) == chelsea.size
    assert _cos(out.pixels, upright.pixels) > 0.98
