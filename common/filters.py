"""Search filters: typed values in, one Milvus boolean expression out.

The only place where a Milvus filter expression is written from values a user gave. A folder
becomes a range on ``path`` (``path >= "dir/" and path < "dir0"``: exactly the paths under
``dir/``, since ``0`` follows ``/`` in byte order), not a ``LIKE``: Milvus ``LIKE`` has no
escape for ``%`` and ``_``, a range needs none. String literals escape ``\\`` and ``"`` (the
only escapes Milvus decodes); a value with a line break is refused (Milvus's parser rejects it
and has no escape for it). Numbers are formatted from ints, never from text.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from ris.common.errors import FilterError


def string_literal(value: str) -> str:
    """``value`` as a Milvus double-quoted string literal."""
    if not isinstance(value, str):
        raise FilterError(f"not a string: {value!r}")
    if "\n" in value or "\r" in value:
        raise FilterError(f"{value!r}: a line break cannot be used in a Milvus filter")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def under_expression(folder: str, field: str = "path") -> str:
    """The rows whose ``field`` lies under ``folder`` (at any depth), as a range."""
    stem = folder.rstrip("/")
    return f"{field} >= {string_literal(stem + '/')} and {field} < {string_literal(stem + '0')}"


def parse_time_ms(text: str) -> int:
    """An ISO 8601 date or date-time (naive means UTC) as unix milliseconds."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise FilterError(f"not an ISO date or date-time: {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def _int(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise FilterError(f"{name} must be an integer, not {value!r}")
    return value


@dataclass(frozen=True)
class SearchFilter:
    """What a search is restricted to; every field optional (None: no restriction)."""

    under: str | None = None  # an absolute folder (or URL prefix ending in a folder)
    ingested_after_ms: int | None = None  # inclusive, unix milliseconds
    ingested_before_ms: int | None = None  # exclusive
    min_width: int | None = None
    min_height: int | None = None

    def __post_init__(self) -> None:
        if self.under is not None:
            string_literal(self.under)  # refuses line breaks now, not on the worker
            if not self.under.strip("/"):
                object.__setattr__(self, "under", None)  # "/" restricts nothing
        for name in ("ingested_after_ms", "ingested_before_ms", "min_width", "min_height"):
            _int(name, getattr(self, name))
        for name in ("min_width", "min_height"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise FilterError(f"{name} must be 0 or more, not {value}")

    @classmethod
    def build(
        cls,
        under: str | None = None,
        ingested_after: str | None = None,
        ingested_before: str | None = None,
        min_width: int | None = None,
        min_height: int | None = None,
    ) -> SearchFilter:
        """From what a user types: a folder (made absolute unless a URL), ISO dates."""
        if under is not None and "://" not in under:
            under = os.path.abspath(os.path.expanduser(under))
        return cls(
            under,
            parse_time_ms(ingested_after) if ingested_after else None,
            parse_time_ms(ingested_before) if ingested_before else None,
            min_width,
            min_height,
        )

    @classmethod
    def from_task(cls, data: dict[str, Any] | None) -> SearchFilter:
        """From a task's JSON argument; unknown keys or wrong types are a FilterError."""
        if not data:
            return cls()
        if not isinstance(data, dict):
            raise FilterError(f"filters must be an object, not {type(data).__name__}")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise FilterError(f"unknown filter(s): {', '.join(sorted(unknown))}")
        return cls(**data)

    def to_task(self) -> dict[str, Any] | None:
        """The JSON a search task carries (None: no filter)."""
        return {k: v for k, v in asdict(self).items() if v is not None} or None

    def expression(self) -> str:
        """The Milvus boolean expression ("" when nothing is restricted)."""
        parts = []
        if self.under is not None:
            parts.append(under_expression(self.under))
        if self.ingested_after_ms is not None:
            parts.append(f"ingested_at >= {int(self.ingested_after_ms)}")
        if self.ingested_before_ms is not None:
            parts.append(f"ingested_at < {int(self.ingested_before_ms)}")
        if self.min_width is not None:
            parts.append(f"width >= {int(self.min_width)}")
        if self.min_height is not None:
            parts.append(f"height >= {int(self.min_height)}")
        return " and ".join(parts)

    def __bool__(self) -> bool:
        return bool(self.expression())
