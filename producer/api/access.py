"""What the API may open: paths under the allowed roots and URLs under the allowed prefixes.

A path from a request (a query image by path, an ingest input) or from the collection (a
thumbnail) is checked here before anything reads it. Off loopback, an API without
``RIS_ALLOWED_ROOTS`` / ``RIS_ALLOWED_URL_PREFIXES`` opens no path / URL at all: a remote client
must not be able to make the server read arbitrary files or fetch arbitrary addresses.
"""

from __future__ import annotations

import glob
import os

from ris.common.errors import AccessError
from ris.common.settings import Settings
from ris.common.sources import SourceError, check_allowed, read_source, url_allowed
from ris.producer.inputs import URL_SCHEMES


def is_url(source: str) -> bool:
    return source.startswith(URL_SCHEMES) and not source.startswith("file://")


def check_source(source: str, settings: Settings, loopback: bool) -> None:
    """Raise AccessError unless the API may read ``source`` (a path, a glob or a URL)."""
    if is_url(source):
        if not settings.allowed_url_prefixes and not loopback:
            raise AccessError(f"{source}: URLs need RIS_ALLOWED_URL_PREFIXES off loopback")
        if not url_allowed(source, settings):
            raise AccessError(f"{source}: URL not allowed (RIS_ALLOWED_URL_PREFIXES)")
        return
    path = source.removeprefix("file://")
    if not settings.allowed_roots and not loopback:
        raise AccessError(f"{source}: paths need RIS_ALLOWED_ROOTS off loopback")
    if glob.has_magic(path):
        # The fixed part of a glob must be inside a root; what it matches is re-checked by
        # the workers, which refuse symlink escapes.
        head = path.split("*", 1)[0].split("?", 1)[0].split("[", 1)[0]
        path = os.path.dirname(head) or "."
    try:
        check_allowed(os.path.expanduser(path), settings.allowed_roots)
    except SourceError as exc:
        raise AccessError(f"{source}: {exc}") from None


def read_checked(source: str, settings: Settings, loopback: bool) -> bytes:
    """The bytes at ``source`` once it passes ``check_source``; SourceError if unreadable."""
    check_source(source, settings, loopback)
    return read_source(source, settings).data
