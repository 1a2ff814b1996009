"""The image collection in Milvus: writes, reads, searches and the id -> path table.

Each row is one image, an :class:`ris.common.contracts.ImageRow`: ``id`` (int64 derived from
the image's absolute path, so re-ingesting a file upserts the same row), its vector and the
path table as scalar fields (:mod:`ris.common.store.schema`). The collection's description
records the model and dimension it was built with; opening it with another model is an error
rather than a silent mix of incomparable vectors.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ris.common.contracts import ImageRow
from ris.common.errors import CollectionNotFoundError
from ris.common.settings import Settings
from ris.common.store import schema
from ris.common.store.client import BoundedClient
from ris.common.store.identity import read_consistency
from ris.common.store.schema import SCALAR_FIELDS, STAT_FIELDS

log = logging.getLogger(__name__)

# Milvus Lite never returns the timestamp a query iterator asks for, and pymilvus warns on
# every iterator (so on every `ris sync`): the client-side timestamp it falls back to is fine.
logging.getLogger("pymilvus.orm.iterator").addFilter(
    lambda record: "failed to get mvccTs" not in record.getMessage()
)

# Milvus caps expression sizes; look-ups by id go in slices of this many ids.
_IN_BATCH = 1000
# Rows per upsert call. Past about 1,200 rows of 1,280-d a call, Milvus Lite 2.5.1 slows from
# about 5,000 to under 250 rows/s (6 to 11 s a call, measured with 1,000 to 2,000 rows), and a
# server write of 2,000 rows ran at half the rate of 1,000.
_UPSERT_BATCH = 1000
# Milvus LIKE has no escape for its wildcards: a prefix is matched up to its first one, and the
# rows found are then filtered exactly.
_LIKE_SPECIAL = ("%", "_", "\\", '"')


def _slices(ids: Iterable[int], n: int = _IN_BATCH) -> Iterator[list[int]]:
    """``ids`` as plain ints, ``n`` at a time: every look-up by id goes through here."""
    ids = [int(i) for i in ids]
    for start in range(0, len(ids), n):
        yield ids[start : start + n]


@dataclass(frozen=True)
class Hit:
    """One search result, resolved to its stored scalar fields."""

    id: int
    score: float
    path: str | None = None
    sha256: str | None = None
    width: int | None = None
    height: int | None = None
    ingested_at: int | None = None


class ImageStore:
    """The image collection in Milvus for one model."""

    def __init__(self, settings: Settings, model: str, dim: int, create: bool = True) -> None:
        """Open the collection; with ``create`` (writers) make it if missing, else (readers:
        search, info, delete) a missing collection is a :class:`CollectionNotFoundError`."""
        self.settings = settings
        self.name = settings.collection
        self.model = model
        self.dim = dim
        self.client = BoundedClient(settings, create)
        if not create and not self.client.has_collection(self.name):
            existing = sorted(self.client.list_collections())
            self.client.close()
            raise CollectionNotFoundError(
                f"collection {self.name!r} does not exist in Milvus at {settings.milvus_uri} "
                f"(collections there: {', '.join(existing) or 'none'})"
            )
        consistency = read_consistency(settings)
        self._read: dict[str, Any] = {"consistency_level": consistency} if consistency else {}
        search_level = consistency and (settings.search_consistency or consistency)
        self._search: dict[str, Any] = {"consistency_level": search_level} if search_level else {}
        expected = schema.identity(model, dim, settings)
        schema.create_collection(self.client, self.name, expected)
        schema.check_identity(self.client, self.name, expected)
        self.has_stat_fields = schema.has_stat_fields(self.client, self.name)
        schema.ensure_index(self.client, self.name, settings)
        self.client.load_collection(self.name)

    def _by_id(
        self, ids: Iterable[int], fields: list[str], read: bool = False
    ) -> Iterator[dict[str, Any]]:
        """The rows of ``ids`` that exist, with ``fields`` (``read``: seeing every
        acknowledged write)."""
        for part in _slices(ids):
            yield from self.client.query(
                self.name, f"id in {part}", fields, **(self._read if read else {})
            )

    # --- writes ----------------------------------------------------------------------------
    def upsert(self, rows: Sequence[ImageRow], new_ids: Collection[int] = ()) -> None:
        """Insert or replace rows (``id`` from :func:`path_id`); idempotent under redelivery.

        Rows in ``new_ids`` (looked up as absent just before, under a claim that keeps any
        other writer off them: :mod:`ris.workers.claims`; else they would be stored twice) go
        in by plain insert: an upsert is a delete plus an insert, and a Milvus server counts
        each such delete against the row's own segment, then rewrites and re-indexes every
        segment whose rows were all upserted (a second index build of everything ingested).
        """
        # The fields written are the collection's own: one created before the stat fields
        # takes the rows without them. An id twice in one write would be stored twice (by
        # insert, and by Milvus's upsert too): the last one is written.
        rows = list({r.id: r for r in rows}.values())
        for start in range(0, len(rows), _UPSERT_BATCH):
            part = rows[start : start + _UPSERT_BATCH]
            # Bounded by the rows written, not 10x the call timeout: a worker cut off by a
            # partition mid-upsert is back within seconds of the heal, not minutes
            # (tests/system/test_multihost.py); 2,000 rows took 26-29 s on a loaded 2-core machine.
            timeout = self.settings.milvus_timeout_s * (1 + len(part) / 100)
            fresh = [r for r in part if r.id in new_ids]
            rest = [r for r in part if r.id not in new_ids]
            for group, insert in ((fresh, True), (rest, False)):
                if group:
                    self.client.write_rows(self.name, group, timeout, insert)

    def refresh_stats(self, stats: dict[int, tuple[int, int]]) -> None:
        """Store a new ``(size, mtime_ns)`` for rows whose content is unchanged (a file
        touched or copied back), so the next sync need not hash them again."""
        if not self.has_stat_fields or not stats:
            return
        rows = self._by_id(stats, ["id", "vector", *SCALAR_FIELDS])
        self.upsert(
            [
                ImageRow(
                    **{k: r[k] for k in ("id", "vector", *SCALAR_FIELDS)},
                    size=stats[int(r["id"])][0],
                    mtime_ns=stats[int(r["id"])][1],
                )
                for r in rows
            ]
        )

    def delete_ids(self, ids: Iterable[int]) -> int:
        """Delete rows by id; returns how many of them existed (the rows actually removed)."""
        ids = list(dict.fromkeys(int(i) for i in ids))
        existing = list(self.resolve(ids))
        for part in _slices(existing):
            self.client.delete(self.name, part)
        return len(existing)

    def delete_prefix(self, prefix: str) -> int:
        """Delete the rows at ``prefix`` or under it as a folder: ``a/b`` is that path or
        that folder, ``a/b/`` the folder only, and ``a/b2/x`` is under neither; ``%``, ``_``
        and ``\\`` are plain characters. Returns the count removed."""
        return self.delete_ids(self.paths_under(prefix))

    def paths_under(self, prefix: str) -> dict[int, str]:
        """``id -> path`` of the rows at ``prefix`` or under it as a directory."""
        exact = prefix if not prefix.endswith("/") else None  # "a/b/" names a folder only
        stem = prefix.rstrip("/")
        folder = stem + "/"
        # LIKE narrows the scan to the literal part before any special character; Python
        # decides exactly (Milvus LIKE cannot escape % and _).
        cut = min([stem.find(c) for c in _LIKE_SPECIAL if c in stem] or [len(stem)])
        found: dict[int, str] = {}
        # An iterator: a plain query returns at most 16,384 rows.
        rows = self.client.query_iterator(
            self.name,
            batch_size=_IN_BATCH,
            filter=f'path like "{stem[:cut]}%"',
            output_fields=["id", "path"],
            **self._read,
        )
        try:
            while batch := rows.next():
                for r in batch:
                    if r["path"] == exact or str(r["path"]).startswith(folder):
                        found[int(r["id"])] = str(r["path"])
        finally:
            rows.close()
        return found

    def flush(self) -> None:
        """Seal growing segments: searches over flushed data are much faster."""
        self.client.flush(self.name)

    def drop(self) -> None:
        """Drop the whole collection."""
        self.client.drop_collection(self.name)

    # --- reads -----------------------------------------------------------------------------
    def known_hashes(self, ids: Sequence[int]) -> dict[int, str]:
        """``id -> sha256`` of the given ids already stored (to skip unchanged files)."""
        return {int(r["id"]): str(r["sha256"]) for r in self._by_id(ids, ["id", "sha256"], True)}

    def known_stats(self, ids: Sequence[int]) -> dict[int, tuple[str, int, int]]:
        """``id -> (sha256, size, mtime_ns)`` of the given ids already stored (size and mtime
        -1 on a collection created before the stat fields: such files are hashed)."""
        fields = ["id", "sha256", *(STAT_FIELDS if self.has_stat_fields else ())]
        return {
            int(r["id"]): (str(r["sha256"]), int(r.get("size", -1)), int(r.get("mtime_ns", -1)))
            # Strong on a server: a row another chunk inserted a moment ago must be seen, or
            # it would be inserted twice (ris.workers.claims).
            for r in self._by_id(ids, fields, read=True)
        }

    def rows_under(self, folder: str) -> dict[int, tuple[str, int, int]]:
        """``id -> (path, size, mtime_ns)`` of every row under ``folder`` (size and mtime -1
        on a collection without the stat fields), read in batches."""
        from ris.common.filters import under_expression

        fields = ["id", "path", *(STAT_FIELDS if self.has_stat_fields else ())]
        found: dict[int, tuple[str, int, int]] = {}
        rows = self.client.query_iterator(
            self.name,
            batch_size=_IN_BATCH * 10,
            filter=under_expression(folder),
            output_fields=fields,
        )
        try:
            while batch := rows.next():
                for r in batch:
                    found[int(r["id"])] = (
                        str(r["path"]),
                        int(r.get("size", -1)),
                        int(r.get("mtime_ns", -1)),
                    )
        finally:
            rows.close()
        return found

    def vectors(self, ids: Sequence[int]) -> dict[int, np.ndarray]:
        """``id -> vector`` of the given ids that exist."""
        return {
            int(r["id"]): np.asarray(r["vector"], dtype=np.float32)
            for r in self._by_id(ids, ["id", "vector"])
        }

    def ids(self, expression: str = "") -> list[int]:
        """Every id matching ``expression`` (built by :mod:`ris.common.filters`; "" for all)."""
        found: list[int] = []
        rows = self.client.query_iterator(
            self.name,
            batch_size=_IN_BATCH * 10,
            filter=expression or "id >= 0",  # ids are 63-bit: never negative
            output_fields=["id"],
        )
        try:
            while batch := rows.next():
                found.extend(int(r["id"]) for r in batch)
        finally:
            rows.close()
        return found

    def search(
        self, vectors: np.ndarray, top_k: int, expression: str = ""
    ) -> list[list[tuple[int, float]]]:
        """Nearest ids and scores for each query vector (IP/COSINE: higher is closer), among
        the rows matching ``expression`` (built by :mod:`ris.common.filters`; "" for all)."""
        params = dict(self.settings.search_params)
        if "ef" in params:  # HNSW refuses a candidate list shorter than the results asked for
            params["ef"] = max(int(params["ef"]), top_k)
        result = self.client.search(
            self.name,
            data=[v.tolist() for v in np.atleast_2d(vectors)],
            limit=top_k,
            search_params={"metric_type": self.settings.metric, "params": params},
            filter=expression,
            **self._search,
        )
        return [[(int(h["id"]), float(h["distance"])) for h in hits] for hits in result]

    def resolve(self, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        """The scalar fields (path, sha256, size, time) of each id that exists."""
        return {
            int(r["id"]): {k: r[k] for k in SCALAR_FIELDS}
            for r in self._by_id(ids, ["id", *SCALAR_FIELDS], True)
        }

    def count(self) -> int:
        """Number of rows (exact, counts unflushed rows too)."""
        rows = self.client.query(self.name, "", ["count(*)"], **self._read)
        return int(rows[0]["count(*)"])

    def index(self) -> dict[str, Any]:
        """The vector index as Milvus reports it (type, metric and build parameters)."""
        desc = self.client.describe_index(self.name, "vector")
        head: dict[str, Any] = {
            k: desc.pop(k) for k in ("index_type", "metric_type", "state") if k in desc
        }
        for k in ("dim", "field_name", "index_name"):
            desc.pop(k, None)
        return {**head, "params": {k: v for k, v in desc.items() if not k.endswith("rows")}}

    def close(self) -> None:
        self.client.close()


def open_store(settings: Settings, create: bool = True) -> ImageStore:
    """The store for the configured model (its dimension comes from the model registry);
    ``create=False`` opens an existing collection only."""
    from ris.common.models import get_spec

    spec = get_spec(settings.model)
    return ImageStore(settings, spec.name, spec.dim, create)


class StoreCache:
    """The stores of one process by collection name, each opened on first use (so a process
    starts while Milvus is down) and forgotten after a Milvus error (the next use reconnects)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._stores: dict[str, ImageStore] = {}

    def get(self, collection: str | None = None, create: bool = True) -> ImageStore:
        """The store of ``collection`` (default: the configured one); ``create=False`` for
        readers, which never create a collection."""
        name = collection or self.settings.collection
        if name not in self._stores:
            self._stores[name] = open_store(
                self.settings.model_copy(update={"collection": name}), create
            )
        return self._stores[name]

    def forget(self, collection: str | None = None) -> None:
        """Close and drop the client of ``collection``, or of every collection."""
        names = list(self._stores) if collection is None else [collection]
        for name in names:
            store = self._stores.pop(name, None)
            if store is not None:
                with contextlib.suppress(Exception):  # after a Milvus error: it may be gone
                    store.close()
