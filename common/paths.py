"""One text form for every local path, lossless through JSON, Redis and Milvus.

A path whose bytes are valid UTF-8 travels as itself. A path that is not (Linux allows any
bytes but ``/`` and NUL; Python decodes such names with ``surrogateescape``, giving a str
that cannot be UTF-8 encoded) travels as a ``file://`` URL (RFC 8089) in which each byte that
is not part of valid UTF-8, and each ``%``, is percent-encoded: ``/p/\\xff.jpg`` becomes
``file:///p/%FF.jpg``. Readable, valid UTF-8, and decoded back to the exact bytes by a worker.
"""

from __future__ import annotations

import os
from urllib.parse import unquote_to_bytes

FILE_SCHEME = "file://"
# surrogateescape maps an undecodable byte b to the lone surrogate U+DC00 + b (b >= 0x80).
_LOW, _HIGH = 0xDC80, 0xDCFF


def is_utf8(text: str) -> bool:
    """Whether ``text`` can be encoded as UTF-8 (no lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def encode_path(path: str) -> str:
    """The text form of a local path (as ``os`` functions return it): itself when valid
    UTF-8, else a percent-encoded ``file://`` URL."""
    if is_utf8(path):
        return path
    try:
        raw = os.fsencode(path)
    except UnicodeEncodeError:  # a surrogate no file system byte maps to (not a real name)
        raw = path.encode("utf-8", "surrogatepass")
    text = raw.decode("utf-8", "surrogateescape")
    out = []
    for ch in text:
        if _LOW <= ord(ch) <= _HIGH:
            out.append(f"%{ord(ch) - 0xDC00:02X}")
        elif ch == "%":
            out.append("%25")
        else:
            out.append(ch)
    return FILE_SCHEME + "".join(out)


def decode_file_url(url: str) -> str:
    """The local path named by a ``file://`` URL, percent-decoded to its exact bytes (and
    returned as ``os`` functions take it)."""
    rest = url.removeprefix(FILE_SCHEME)
    if rest.startswith("localhost/"):
        rest = rest.removeprefix("localhost")
    return os.fsdecode(unquote_to_bytes(rest))
