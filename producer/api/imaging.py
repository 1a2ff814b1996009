"""Image checks and renditions for the API: uploads are images by decoding, not by header."""

from __future__ import annotations

import io

from PIL import Image

from ris.common.errors import TooLarge
from ris.common.images import ImageError, open_rgb

# Formats a browser shows as they are; anything else is re-encoded to PNG.
_WEB_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif", "WEBP": "image/webp"}


def check_image(data: bytes, max_pixels: int) -> None:
    """Decode ``data`` (JPEGs at reduced scale) or raise ImageError / TooLarge with the reason."""
    try:
        open_rgb(data, max_pixels, target=256)
    except ImageError as exc:
        if str(exc).startswith("image too large"):
            raise TooLarge(str(exc)) from None
        raise


def thumbnail(data: bytes, size: int, max_pixels: int) -> bytes:
    """A JPEG no larger than ``size`` on its longer side, upright (EXIF applied)."""
    img = open_rgb(data, max_pixels, target=size)
    img.thumbnail((size, size), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    img.save(out, "JPEG", quality=85)
    return out.getvalue()


def full_size(data: bytes, max_pixels: int) -> tuple[bytes, str]:
    """The image as a browser can show it: the original bytes for web formats (after a
    decoding check), else a PNG; with its media type."""
    img = open_rgb(data, max_pixels)
    with Image.open(io.BytesIO(data)) as probe:
        media_type = _WEB_FORMATS.get(str(probe.format))
    if media_type:
        return data, media_type
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue(), "image/png"
