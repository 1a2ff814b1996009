"""Read image bytes from where the producer said they are, within the allowed roots.

Local paths (and their ``file://`` text form, see common/paths.py) are read directly, regular
files only, streaming and hashing while reading; URLs (``http(s)://``, ``s3://``, ``gs://``)
through fsspec, so workers on other machines need no shared file system.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import BinaryIO, NamedTuple

from celery.exceptions import SoftTimeLimitExceeded

from ris.common.errors import SourceError
from ris.common.paths import FILE_SCHEME, decode_file_url
from ris.common.settings import Settings


def check_allowed(path: str, allowed_roots: list[Path]) -> Path:
    """Resolve ``path`` (symlinks and ``..`` included) and refuse it outside the allowed roots."""
    resolved = Path(os.path.realpath(path))
    if not allowed_roots:
        return resolved
    for root in allowed_roots:
        if resolved.is_relative_to(Path(os.path.realpath(root))):
            return resolved
    raise SourceError(f"outside the allowed roots ({', '.join(map(str, allowed_roots))})")


class Source(NamedTuple):
    """An image's bytes and their SHA-256, computed while reading."""

    data: bytes
    sha256: str


# Bytes read per system call: the only buffer besides the image itself.
_BLOCK = 1024 * 1024
# What st_mode says a path is, for the reason a non-regular file is refused.
_KINDS = (
    (stat.S_ISDIR, "is a directory, not a file"),
    (stat.S_ISFIFO, "not a regular file (a FIFO / named pipe)"),
    (stat.S_ISCHR, "not a regular file (a character device)"),
    (stat.S_ISBLK, "not a regular file (a block device)"),
    (stat.S_ISSOCK, "not a regular file (a socket)"),
)


def read_source(path: str, settings: Settings) -> Source:
    """The bytes of the image at ``path`` (a local path, its ``file://`` text form, or a URL)
    and their SHA-256; SourceError with the reason if it cannot be read. Only regular files
    are read, never more than ``max_file_bytes``. Network failures raise OSError, for the
    task to retry."""
    if path.startswith(FILE_SCHEME):
        path = decode_file_url(path)
    elif "://" in path:
        return _read_url(path, settings)
    if not os.path.lexists(path):
        raise SourceError("no such file")
    if os.path.islink(path) and not os.path.exists(path):
        raise SourceError("broken symbolic link")
    real = check_allowed(path, settings.allowed_roots)
    try:
        # stat before open: opening a FIFO blocks, opening a device can have side effects.
        _require_regular(os.stat(real).st_mode)
        # O_NONBLOCK: should the path have become a FIFO since, open returns at once.
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except PermissionError:
        raise SourceError("permission denied") from None
    except OSError as exc:
        raise SourceError(f"cannot read: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb", buffering=0) as fh:
        try:
            info = os.fstat(fd)
            _require_regular(info.st_mode)
            _check_size(info.st_size, settings.max_file_bytes)
            return _read_stream(fh, settings.max_file_bytes)
        except OSError as exc:
            raise SourceError(f"cannot read: {exc.strerror or exc}") from None


def _require_regular(mode: int) -> None:
    for test, reason in _KINDS:
        if test(mode):
            raise SourceError(reason)
    if not stat.S_ISREG(mode):
        raise SourceError("not a regular file")


def _check_size(size: int, limit: int) -> None:
    if size > limit:
        raise SourceError(f"file too large: {size:,} bytes exceeds the limit of {limit:,}")


def _read_stream(fh: BinaryIO, limit: int) -> Source:
    """Read ``fh`` to its end in blocks, hashing as it goes; refuse it as soon as it passes
    ``limit`` (a file that grows while read, or a size the file system does not report)."""
    digest = hashlib.sha256()
    parts: list[bytes] = []
    size = 0
    while block := fh.read(_BLOCK):
        size += len(block)
        if size > limit:
            raise SourceError(f"file too large: exceeds the limit of {limit:,} bytes")
        digest.update(block)
        parts.append(block)
    return Source(b"".join(parts), digest.hexdigest())


def url_allowed(url: str, settings: Settings) -> bool:
    """Whether a worker may fetch ``url`` (see ``allowed_url_prefixes``)."""
    if settings.allowed_url_prefixes:
        return url.startswith(tuple(settings.allowed_url_prefixes))
    return not settings.allowed_roots


def _read_url(url: str, settings: Settings) -> Source:
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
            return _read_stream(fh, settings.max_file_bytes)
    except (SourceError, SoftTimeLimitExceeded):  # the task's time limit is not a network error
        raise
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
