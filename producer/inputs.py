"""Turn what the user names (folders, globs, list files, paths, URLs) into image paths.

Links are followed, but a directory is walked once, however many links lead to it
(a link back up the tree is no loop), and a file reached by several paths (symbolic or hard
links) is yielded once, by the first of its paths: inputs in the order given, a folder depth
first with each directory's entries in name order, a glob's matches sorted.
Paths are yielded in their text form (:func:`common.paths.encode_path`).
"""

from __future__ import annotations

import csv
import fnmatch
import glob
import os
from collections.abc import Iterable, Iterator
from functools import lru_cache
from pathlib import Path

from ris.common.paths import encode_path

LIST_EXTENSIONS = frozenset({".txt", ".csv", ".lst", ".tsv"})
URL_SCHEMES = ("http://", "https://", "s3://", "gs://", "file://")
# Formats Pillow registers but cannot decode here: MPEG and IPTC are identified, not decoded.
_UNDECODABLE = frozenset({"MPEG", "IPTC"})

DirKey = tuple[int, int]


@lru_cache(maxsize=1)
def image_extensions() -> frozenset[str]:
    """Every file extension the workers' decoder opens (Pillow's registered readers, after the
    decoder module registered its plugins), minus stub formats with no decoder."""
    from PIL import EpsImagePlugin, Image, ImageFile

    import ris.common.images  # noqa: F401  (registers the decoder's plugins, if any)

    Image.init()
    out = set()
    for ext, fmt in Image.registered_extensions().items():
        factory = Image.OPEN.get(fmt, (None,))[0]
        if factory is None or fmt in _UNDECODABLE:
            continue
        if isinstance(factory, type) and issubclass(factory, ImageFile.StubImageFile):
            continue
        if fmt == "EPS" and not EpsImagePlugin.has_ghostscript():
            continue
        out.add(ext.lower())
    return frozenset(out)


def _dir_key(path: str) -> DirKey | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def walk_folder(folder: str) -> Iterator[str]:
    """The image files ``ris ingest FOLDER`` indexes: every one under ``folder``, links to
    directories followed, each directory walked once."""
    return _walk(os.path.abspath(folder), set())


def _walk(folder: str, visited: set[DirKey]) -> Iterator[str]:
    """Image files under ``folder``, depth first, each directory's entries in name order;
    symbolic links to directories are followed unless the directory was walked already."""
    extensions = image_extensions()
    stack = [iter(_entries(folder, visited))]
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
            continue
        try:
            is_dir = entry.is_dir()  # follows links
        except OSError:
            is_dir = False
        if is_dir:
            stack.append(iter(_entries(entry.path, visited)))
        elif os.path.splitext(entry.name)[1].lower() in extensions:
            # Anything else named like an image (broken link, FIFO...) is passed on, for the
            # job to report with its reason.
            yield os.path.abspath(entry.path)


def _entries(folder: str, visited: set[DirKey]) -> list[os.DirEntry[str]]:
    """The entries of ``folder`` sorted by name; none if it was walked already."""
    key = _dir_key(folder)
    if key is None or key in visited:
        return []
    visited.add(key)
    try:
        with os.scandir(folder) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError:
        return []  # an unreadable directory: its files cannot be named


def _glob(pattern: str) -> list[str]:
    """Sorted matches of ``pattern``; ``**`` matches any depth, following links to directories
    once each (Python's glob follows a link loop until the path is too long)."""
    pattern = os.path.abspath(pattern)
    parts = pattern.split(os.sep)[1:]
    matches: list[str] = []
    visited: set[DirKey] = set()

    def match(base: str, rest: list[str]) -> None:
        if not rest:
            matches.append(base)
            return
        head, tail = rest[0], rest[1:]
        if head == "**":
            key = _dir_key(base)
            if key is None or key in visited:
                return
            visited.add(key)
            match(base, tail)  # zero directories
            for name in _listdir(base):
                sub = os.path.join(base, name)
                if not name.startswith(".") and os.path.isdir(sub):
                    match(sub, rest)
        elif glob.has_magic(head):
            for name in _listdir(base):
                if fnmatch.fnmatchcase(name, head) and (
                    head.startswith(".") or not name.startswith(".")
                ):
                    _descend(os.path.join(base, name), tail)
        else:
            _descend(os.path.join(base, head), tail)

    def _descend(path: str, tail: list[str]) -> None:
        if not tail:
            if os.path.lexists(path):
                matches.append(path)
        elif os.path.isdir(path):
            match(path, tail)

    match(os.sep, parts)
    return sorted(matches)


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


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
    """Yield each image once, in a stable order, as its path's text form.

    A folder is walked recursively for image files; a glob is expanded (``**`` recurses);
    a ``.txt``/``.csv`` file lists paths; a URL or any other path is passed on as given, so a
    missing or non-image file is reported by the job with its reason. One file reached by
    several paths (links) is yielded by the first of them.
    """
    seen: set[object] = set()
    visited: set[DirKey] = set()
    for raw in inputs:
        for path in _expand_one(raw, visited):
            key: object = path
            if not path.startswith(URL_SCHEMES):
                try:
                    st = os.stat(path)
                    key = (st.st_dev, st.st_ino)
                except OSError:
                    pass
            if key not in seen:
                seen.add(key)
                yield path if path.startswith(URL_SCHEMES) else encode_path(path)


def _expand_one(raw: str, visited: set[DirKey]) -> Iterator[str]:
    if raw.startswith(URL_SCHEMES):
        yield raw
        return
    path = os.path.expanduser(raw)
    if glob.has_magic(raw):
        for match in _glob(path):
            if os.path.isdir(match):
                yield from _walk(match, visited)
            else:
                yield os.path.abspath(match)
    elif os.path.isdir(path):
        yield from _walk(path, visited)
    elif os.path.isfile(path) and os.path.splitext(path)[1].lower() in LIST_EXTENSIONS:
        yield from _read_list(Path(path))
    else:
        yield os.path.abspath(path)


def absolute_prefix(prefix: str) -> str:
    """A path prefix made absolute, keeping a trailing slash ("dir/": that folder only, not
    "dir2"); a URL prefix as given."""
    if "://" in prefix:
        return prefix
    return os.path.abspath(prefix) + ("/" if prefix.endswith("/") else "")
