"""Load one image for the model: stat the file, skip it when size and mtime match the stored
ones, read its bytes (unless given), hash them, skip it when the stored hash matches, decode it.
What a decoding process (or thread) does, in one place: none of it runs on the worker's GIL.

A GPU worker runs this in processes (``ris.workers.decode_pool``): reading, hashing and decoding
would otherwise take the worker's GIL away from the loop that feeds the GPU. A file is held
only while it is decoded, so a worker's memory is bounded by its decoders, not by its files.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ris.common.images import ImageError, decode
from ris.common.paths import FILE_SCHEME, decode_file_url
from ris.common.settings import Settings
from ris.common.sources import SourceError, check_allowed, read_source

# (size, mtime_ns) of a local file
Stat = tuple[int, int]


class Item(NamedTuple):
    """What to load: ``key`` names a file or URL; ``data``, when given, is its bytes (a query
    image); ``known_sha``/``known_stat`` are what the store holds for it, if anything."""

    key: str
    data: bytes | None = None
    known_sha: str | None = None
    known_stat: Stat | None = None


@dataclass(frozen=True)
class Loaded:
    """One item's outcome: a decoded image, or unchanged, or the reason it failed."""

    key: str
    sha256: str = ""  # empty when unchanged by its stat (not read)
    pixels: np.ndarray | None = None  # uint8 (S, S, 3)
    width: int = 0  # of the original, upright
    height: int = 0
    # Where the pixels wait in the decoding processes' shared memory (ris.workers.decode_pool)
    slot: int = -1
    unchanged: bool = False
    error: str | None = None
    # A network failure worth retrying the task for, rather than a bad file.
    retryable: bool = False
    stat: Stat | None = None  # of a local file, taken before it was read


def load(item: Item, settings: Settings, size: int) -> Loaded:
    """Stat, read, hash and decode one item; never raises."""
    key, data, known_sha, known_stat = item
    stat = None
    try:
        if data is None:
            # Stat'ed before reading: a file changed meanwhile keeps the older stat, so the
            # next sync reads it again rather than trusting a stat newer than the content.
            stat = file_stat(key, settings)
            if stat is not None and stat == known_stat:
                return Loaded(key, unchanged=True, stat=stat)
            data, sha = read_source(key, settings)  # read and hashed in one pass
        else:
            sha = hashlib.sha256(data).hexdigest()
        if sha == known_sha:
            return Loaded(key, sha, unchanged=True, stat=stat)
        image = decode(data, size, settings.max_image_pixels)
        return Loaded(key, sha, image.pixels, image.width, image.height, stat=stat)
    except (SourceError, ImageError) as exc:
        return Loaded(key, error=str(exc))
    except OSError as exc:  # read_source: network trouble
        return Loaded(key, error=f"{type(exc).__name__}: {exc}", retryable=True)
    except Exception as exc:  # never let one file fail the others
        return Loaded(key, error=f"cannot decode: {type(exc).__name__}: {exc}")


def file_stat(key: str, settings: Settings) -> Stat | None:
    """``(size, mtime_ns)`` of a local file, None for a URL or a file that cannot be stat'ed
    or lies outside the allowed roots (it is then read, and fails with its reason)."""
    if "://" in key and not key.startswith(FILE_SCHEME):
        return None
    path = decode_file_url(key) if key.startswith(FILE_SCHEME) else key
    try:
        st = check_allowed(path, settings.allowed_roots).stat()
    except (OSError, SourceError):
        return None
    return st.st_size, st.st_mtime_ns
