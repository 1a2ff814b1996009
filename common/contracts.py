"""What producer and workers agree on: task names, each task's argument and result, and the
Milvus row a worker writes.

A task takes one argument, its request model, and returns its answer model; Celery validates
the one and dumps the other (``pydantic=True``), so both still travel as JSON. The producer
sends ``request.model_dump(mode="json")`` by name and reads the result back with
``Answer.model_validate``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ris.common.paths import encode_path

if TYPE_CHECKING:
    from collections.abc import Sequence

    import numpy as np

INGEST_TASK = "ris.ingest_chunk"
SEARCH_TASK = "ris.search"
DUPLICATES_TASK = "ris.duplicates_slice"


class Contract(BaseModel):
    """A task argument or result: unknown fields are an error, not silently dropped."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class StoreTarget(Contract):
    """Which store a task is for. ``milvus`` is the producer's store identity: a worker that
    writes elsewhere refuses the task (None: accepted). ``collection`` None: the worker's
    configured one."""

    collection: str | None = None
    milvus: str | None = None


class IngestChunk(StoreTarget):
    """``ris.ingest_chunk``: read, embed and upsert ``paths`` for job ``job_id``, as its chunk
    ``number`` (its entry in the job's ledger, :mod:`ris.common.chunks`; None: no entry)."""

    job_id: str
    paths: list[str]
    number: int | None = None

    @field_validator("paths", mode="after")
    @classmethod
    def _text_form(cls, paths: list[str]) -> list[str]:
        # A path that is not valid UTF-8 cannot be a Redis or Milvus key: its text form can.
        return [encode_path(p) for p in paths]


class ChunkOutcome(Contract):
    """What a chunk did; each path's own outcome is in the job's progress (JobTracker)."""

    job_id: str
    indexed: int = 0
    unchanged: int = 0
    failed: int = 0
    skipped: str | None = None  # why the chunk did not run (it ran already)


class SearchRequest(StoreTarget):
    """``ris.search``: the nearest ``top_k`` rows to one image, among those matching
    ``filters`` (:meth:`ris.common.filters.SearchFilter.to_task`; the worker checks them)."""

    name: str
    image_b64: str
    top_k: int = Field(ge=1)
    filters: dict[str, Any] | None = None


class SearchAnswer(Contract):
    """The ids and scores found for a query (``hits``: ``[id, score]``, best first), or why
    there are none (``error``)."""

    query: str
    hits: list[tuple[int, float]] = Field(default_factory=list)
    collection: str | None = None
    metric: str | None = None
    timing_ms: dict[str, float] = Field(default_factory=dict)
    error: str | None = None


class DuplicatesSlice(StoreTarget):
    """``ris.duplicates_slice``: the pairs of ``ids`` (one slice of the collection) and the
    rows matching ``filters`` that score ``threshold`` or more."""

    ids: list[int]
    threshold: float
    top_k: int = Field(ge=1)
    filters: dict[str, Any] | None = None


class DuplicatesAnswer(Contract):
    """``pairs``: ``(a, b, score)`` with ``a < b``; ``searched``: ids of the slice found."""

    pairs: list[tuple[int, int, float]] = Field(default_factory=list)
    searched: int = 0
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ImageRow:
    """One image in the Milvus collection (:mod:`ris.common.store` holds its schema)."""

    id: int  # ris.common.store.path_id(path)
    vector: np.ndarray | Sequence[float]
    path: str
    sha256: str
    width: int
    height: int
    ingested_at: int  # unix milliseconds
    # The file's stat when it was read; -1 for a URL (never skipped by stat).
    size: int = -1
    mtime_ns: int = -1
