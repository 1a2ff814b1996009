"""Read image bytes from where the producer said they are, within the allowed roots.

Local paths are read directly; URLs (``http(s)://``, ``s3://``, ``gs://``) through fsspec, so
workers on other machines need no shared file system.
"""

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
    """The bytes of the image at ``path`` (a local path or a URL); SourceError with the reason
    if it cannot be read. Network failures raise OSError, for the task to retry."""
    if path.startswith("file://"):
        path = path.removeprefix("file://")
    elif "://" in path:
        return _read_url(path, settings)
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


def url_allowed(url: str, settings: Settings) -> bool:
    """Whether a worker may fetch ``url`` (see ``allowed_url_prefixes``)."""
    if settings.allowed_url_prefixes:
        return url.startswith(tuple(settings.allowed_url_prefixes))
    return not settings.allowed_roots


def _read_url(url: str, settings: Settings) -> bytes:
    import fsspec

    if not url_allowed(url, settings):
        raise SourceError("URL not allowed (RIS_ALLOWED_URL_PREFIXES)")
    scheme = url.split("://", 1)[0]
    options: dict[str, object] = {}
    if scheme in ("http", "https"):
        import aiohttp

        options["client_kwargs"] = {"timeout": aiohttp.ClientTimeout(total=settings.url_timeout_s)}
    try:
        with fsspec.open(url, "rb", **options) as fh:
            data: bytes = fh.read(settings.max_file_bytes + 1)
    except FileNotFoundError:
        raise SourceError("no such file (URL not found)") from None
    except PermissionError:
        raise SourceError("permission denied") from None
    except ImportError as exc:
        raise SourceError(f"cannot read {scheme}:// URLs: install {exc.name}") from None
    except ValueError as exc:  # an unknown protocol, a malformed URL
        raise SourceError(f"cannot read URL: {exc}") from None
    except Exception as exc:
        status = getattr(exc, "status", None)
        if isinstance(status, int) and 400 <= status < 500:
            raise SourceError(f"HTTP {status}") from None
        if isinstance(exc, OSError):
            raise
        raise ConnectionError(f"{type(exc).__name__}: {exc}") from exc
    if len(data) > settings.max_file_bytes:
        raise SourceError(f"file too large: exceeds the limit of {settings.max_file_bytes:,}")
    return data
