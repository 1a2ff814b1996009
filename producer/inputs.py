"""Turn what the user names (folders, globs, list files, paths, URLs) into image paths."""

from __future__ import annotations

import csv
import glob
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".jfif", ".ppm", ".pgm"}
)
LIST_EXTENSIONS = frozenset({".txt", ".csv", ".lst", ".tsv"})
URL_SCHEMES = ("http://", "https://", "s3://", "gs://", "file://")


def _walk(folder: Path) -> Iterator[str]:
    # Sorted, so a re-run enqueues the same chunks in the same order.
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs.sort()
        for name in sorted(files):
            if Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                yield os.path.abspath(os.path.join(root, name))


def _read_list(list_file: Path) -> Iterator[str]:
    """Paths from a text file (one a line) or a CSV (a ``path`` column, else the first)."""
    base = list_file.parent
    with open(list_file, newline="", encoding="utf-8") as fh:
        if list_file.suffix.lower() in (".csv", ".tsv"):
            dialect = "excel-tab" if list_file.suffix.lower() == ".tsv" else "excel"
            rows = list(csv.reader(fh, dialect=dialect))
            if not rows:
                return
            header = [c.strip().lower() for c in rows[0]]
            column = header.index("path") if "path" in header else 0
            body = rows[1:] if "path" in header else rows
            entries: Iterable[str] = (r[column] for r in body if len(r) > column)
        else:
            entries = fh
        for entry in entries:
            entry = entry.strip()
            if entry and not entry.startswith("#"):
                yield entry if entry.startswith(URL_SCHEMES) else os.path.abspath(base / entry)


def expand_inputs(inputs: Iterable[str]) -> Iterator[str]:
    """Yield each image path once, in a stable order.

    A folder is walked recursively for image files; a glob is expanded (``**`` recurses);
    a ``.txt``/``.csv`` file lists paths; a URL or any other path is passed on as given, so a
    missing or non-image file is reported by the job with its reason.
    """
    seen: set[str] = set()
    for raw in inputs:
        for path in _expand_one(raw):
            if path not in seen:
                seen.add(path)
                yield path


def _expand_one(raw: str) -> Iterator[str]:
    if raw.startswith(URL_SCHEMES):
        yield raw
        return
    path = Path(raw).expanduser()
    if glob.has_magic(raw):
        for match in sorted(glob.glob(str(path), recursive=True)):
            yield from _expand_one(match) if os.path.isdir(match) else [os.path.abspath(match)]
    elif path.is_dir():
        yield from _walk(path)
    elif path.is_file() and path.suffix.lower() in LIST_EXTENSIONS:
        yield from _read_list(path)
    else:
        yield os.path.abspath(path)
