"""Read image bytes from where the producer said they are, within the allowed roots."""

from __future__ import annotations

import os
from pathlib import Path

from common.settings import Settings


class SourceError(ValueError):
    """The path cannot be read; the message is the reason shown to the user."""


def check_allowed(path: str, allowed_roots: list[Path]) -> Path:
    """Resolve ``path`` (symlinks and ``..`` included) and refuse it outside the allowed roots."""
    resolved = Path(os.path.realpath(path))
    if not allowed_roots:
        return resolved
    for root in allowed_roots:
        if resolved.is_relative_to(Path(os.path.realpath(root))):
            return resolved
    raise SourceError(f"outside the allowed roots ({', '.join(map(str, allowed_roots))})")


def read_source(path: str, settings: Settings) -> bytes:
    """The bytes of the image at ``path``; SourceError with the reason if it cannot be read."""
    if not os.path.lexists(path):
        raise SourceError("no such file")
    if os.path.islink(path) and not os.path.exists(path):
        raise SourceError("broken symbolic link")
    real = check_allowed(path, settings.allowed_roots)
    if real.is_dir():
        raise SourceError("is a directory, not a file")
    try:
        size = real.stat().st_size
        if size > settings.max_file_bytes:
            raise SourceError(
                f"file too large: {size:,} bytes exceeds the limit of {settings.max_file_bytes:,}"
            )
        with open(real, "rb") as fh:
            return fh.read(settings.max_file_bytes + 1)
    except PermissionError:
        raise SourceError("permission denied") from None
    except OSError as exc:
        raise SourceError(f"cannot read: {exc.strerror or exc}") from None
