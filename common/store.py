"""The Milvus collection: its schema, writes, searches and the id -> path table.

Each row is one image, an :class:`ris.common.contracts.ImageRow`: ``id`` (int64 derived from
the image's absolute path, so re-ingesting a file upserts the same row), its vector and the
path table as scalar fields. The collection
description records the model and dimension it was built with; opening it with another model
is an error rather than a silent mix of incomparable vectors.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import uuid
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from pymilvus import DataType, MilvusClient
from pymilvus.exceptions import MilvusException

from ris.common.contracts import ImageRow
from ris.common.milvus_write import write_rows
from ris.common.settings import Settings

log = logging.getLogger(__name__)

# Milvus Lite never returns the timestamp a query iterator asks for, and pymilvus warns on
# every iterator (so on every `ris sync`): the client-side timestamp it falls back to is fine.
logging.getLogger("pymilvus.orm.iterator").addFilter(
    lambda record: "failed to get mvccTs" not in record.getMessage()
)

MAX_PATH_LENGTH = 4096
ROW_FIELDS = tuple(f.name for f in fields(ImageRow))
# The file's size and mtime when it was read: `ris sync` and the workers skip a file whose
# stat still matches without reading it. Collections created before these fields lack them.
STAT_FIELDS = ("size", "mtime_ns")
SCALAR_FIELDS = tuple(f for f in ROW_FIELDS if f not in ("id", "vector", *STAT_FIELDS))
# Milvus caps expression sizes; resolve and look-ups go in slices of this many ids.
_IN_BATCH = 1000
# Milvus LIKE has no escape for its wildcards: a prefix is matched up to its first one, and the
# rows found are then filtered exactly.
_LIKE_SPECIAL = ("%", "_", "\\", '"')
# Calls that may legitimately take long (index builds, sealing segments, big writes on a busy
# server) get ten times the per-call timeout; a dead server is still noticed fast, by the
# reads that come first in every task.
_SLOW_CALLS = frozenset(
    {"create_index", "flush", "load_collection", "drop_collection", "insert", "upsert", "delete"}
)
_RPC_CALLS = frozenset(
    {
        "has_collection",
        "create_collection",
        "list_collections",
        "list_indexes",
        "describe_collection",
        "describe_index",
        "query",
        "search",
        *_SLOW_CALLS,
    }
)


class StoreError(RuntimeError):
    """A store that cannot be used as asked; the message says why (shown as one line)."""


class SchemaMismatchError(StoreError):
    """The collection was built with another model, dimension or metric."""


class CollectionNotFoundError(StoreError):
    """Reading a collection (search, info, delete) that does not exist: never created then."""


class MilvusConnectError(ConnectionError):
    """Milvus did not answer, or refused the credentials in RIS_MILVUS_TOKEN."""


def path_id(path: str) -> int:
    """The row id for ``path``: a stable 63-bit hash of the absolute path or URL."""
    digest = hashlib.blake2b(path.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


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


def milvus_uri(settings: Settings, create: bool = True) -> str:
    """The URI clients connect to: a Lite file is served once and shared by all processes.
    Without ``create`` a Lite file that does not exist is an error, not a new database."""
    if settings.milvus_is_lite:
        from ris.common.lite_server import ensure_lite_server

        db = os.path.abspath(os.path.expanduser(settings.milvus_uri))
        if not create and not os.path.exists(db):
            raise CollectionNotFoundError(
                f"no Milvus Lite database at {db} (RIS_MILVUS_URI): nothing indexed there yet"
            )
        return ensure_lite_server(db, settings.lite_registry_dir, settings.lite_bind_address)
    return settings.milvus_uri


def store_identity(settings: Settings) -> str:
    """Which Milvus this process writes to, comparable between machines: a Lite file is
    ``lite://HOST/ABSOLUTE/PATH`` (only processes on its host reach it), a server its URI
    with the host lower-cased and the default port made explicit."""
    if settings.milvus_is_lite:
        db = os.path.realpath(os.path.expanduser(settings.milvus_uri))
        return f"lite://{socket.gethostname()}{db}"
    from urllib.parse import urlsplit

    url = urlsplit(settings.milvus_uri)
    db_name = url.path.strip("/")
    port = url.port or 19530
    return f"{url.scheme}://{(url.hostname or '').lower()}:{port}" + (
        f"/{db_name}" if db_name else ""
    )


def foreign_store(task_store: str | None, settings: Settings) -> str | None:
    """Why a task for ``task_store`` must not run here (None: it is this process's store).
    A task without one comes from an older producer and is accepted."""
    if task_store is None:
        return None
    mine = store_identity(settings)
    if task_store == mine:
        return None
    return (
        f"not indexed: the task is for Milvus {task_store}, but this worker uses {mine} "
        "(give producer and workers the same RIS_MILVUS_URI)"
    )


def read_consistency(settings: Settings) -> str | None:
    """The consistency level of reads that must see every acknowledged write.

    A Milvus server answers Bounded reads (its default) from data up to seconds old, so a count
    or a look-up right after an upsert would miss rows: there, such reads are Strong (they wait
    for the next time tick, ~200 ms). Milvus Lite's reads already see every acknowledged write.
    """
    return None if settings.milvus_is_lite else "Strong"


# Rows per upsert call. Past about 1,200 rows of 1,280-d a call, Milvus Lite 2.5.1 slows from
# about 5,000 to under 250 rows/s (6 to 11 s a call, measured with 1,000 to 2,000 rows), and a
# server write of 2,000 rows ran at half the rate of 1,000.
_UPSERT_BATCH = 1000


class ImageStore:
    """The image collection in Milvus for one model."""

    def __init__(self, settings: Settings, model: str, dim: int, create: bool = True) -> None:
        """Open the collection; with ``create`` (writers) make it if missing, else (readers:
        search, info, delete) a missing collection is a :class:`CollectionNotFoundError`."""
        self.settings = settings
        self.name = settings.collection
        self.model = model
        self.dim = dim
        self.client = milvus_client(settings, create)
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
        self._ensure_collection()

    # --- schema ----------------------------------------------------------------------------
    def _identity(self) -> dict[str, Any]:
        return {"model": self.model, "dim": self.dim, "metric": self.settings.metric}

    def _ensure_collection(self) -> None:
        if not self.client.has_collection(self.name):
            schema = self.client.create_schema(
                auto_id=False, description=json.dumps(self._identity())
            )
            schema.add_field("id", DataType.INT64, is_primary=True)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dim)
            schema.add_field("path", DataType.VARCHAR, max_length=MAX_PATH_LENGTH)
            schema.add_field("sha256", DataType.VARCHAR, max_length=64)
            schema.add_field("width", DataType.INT32)
            schema.add_field("height", DataType.INT32)
            schema.add_field("ingested_at", DataType.INT64)  # unix milliseconds
            schema.add_field("size", DataType.INT64)  # bytes, -1 for a URL
            schema.add_field("mtime_ns", DataType.INT64)  # -1 for a URL
            try:
                self.client.create_collection(self.name, schema=schema)
                log.info("collection %s created (%s)", self.name, self._identity())
            except Exception:
                # Another process created it between our check and create: that is fine.
                if not self.client.has_collection(self.name):
                    raise
        self._check_identity()
        fields = {f["name"] for f in self.client.describe_collection(self.name)["fields"]}
        # A collection created before size/mtime existed: still usable, files are hashed.
        self.has_stat_fields = set(STAT_FIELDS) <= fields
        self._ensure_index()
        self.client.load_collection(self.name)

    def _ensure_index(self) -> None:
        """Index the vectors if nobody has; a collection without an index cannot be searched,
        so one the server refuses is an error, not a log line (and a later run with another
        RIS_INDEX_TYPE indexes the same collection)."""
        if self.client.list_indexes(self.name):
            return
        index = self.client.prepare_index_params()
        index.add_index(
            "vector",
            index_type=self.settings.index_type,
            metric_type=self.settings.metric,
            params=self.settings.index_params,
        )
        try:
            self.client.create_index(self.name, index)
        except Exception as exc:
            if self.client.list_indexes(self.name):  # another process indexed it meanwhile
                return
            reason = getattr(exc, "message", "") or str(exc)
            raise SchemaMismatchError(
                f"Milvus refused index {self.settings.index_type} {self.settings.index_params} "
                f"for collection {self.name!r}: {reason}"
            ) from None

    def _check_identity(self) -> None:
        desc = self.client.describe_collection(self.name)
        try:
            found = json.loads(desc.get("description") or "{}")
        except ValueError:
            found = {}
        expected = self._identity()
        if found != expected:
            raise SchemaMismatchError(
                f"collection {self.name!r} holds {found or 'unknown vectors'}, but this process "
                f"uses {expected}. Use another RIS_COLLECTION, or drop it with "
                f"`ris drop --yes` to re-index with the new model."
            )

    # --- writes ----------------------------------------------------------------------------
    def upsert(self, rows: Sequence[ImageRow], new_ids: Collection[int] = ()) -> None:
        """Insert or replace rows (``id`` from :func:`path_id`); idempotent under redelivery.

        Rows in ``new_ids`` (looked up as absent just before, under a claim that keeps any
        other writer off them: :mod:`ris.common.claims`; else they would be stored twice) go
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
            # (tests/test_multihost.py); 2,000 rows took 26-29 s on a loaded 2-core machine.
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
        ids = list(stats)
        for start in range(0, len(ids), _IN_BATCH):
            part = ids[start : start + _IN_BATCH]
            rows = self.client.query(
                self.name,
                filter=f"id in {part}",
                output_fields=["id", "vector", *SCALAR_FIELDS],
            )
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
        for start in range(0, len(existing), _IN_BATCH):
            self.client.delete(self.name, ids=existing[start : start + _IN_BATCH])
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
            timeout=self.settings.milvus_timeout_s,
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
        out: dict[int, str] = {}
        for start in range(0, len(ids), _IN_BATCH):
            part = ids[start : start + _IN_BATCH]
            rows = self.client.query(
                self.name,
                filter=f"id in {list(part)}",
                output_fields=["id", "sha256"],
                **self._read,
            )
            out.update({int(r["id"]): str(r["sha256"]) for r in rows})
        return out

    def known_stats(self, ids: Sequence[int]) -> dict[int, tuple[str, int, int]]:
        """``id -> (sha256, size, mtime_ns)`` of the given ids already stored (size and mtime
        -1 on a collection created before the stat fields: such files are hashed)."""
        fields = ["id", "sha256", *(STAT_FIELDS if self.has_stat_fields else ())]
        out: dict[int, tuple[str, int, int]] = {}
        for start in range(0, len(ids), _IN_BATCH):
            part = [int(i) for i in ids[start : start + _IN_BATCH]]
            rows = self.client.query(self.name, filter=f"id in {part}", output_fields=fields)
            out.update(
                {
                    int(r["id"]): (
                        str(r["sha256"]),
                        int(r.get("size", -1)),
                        int(r.get("mtime_ns", -1)),
                    )
                    for r in rows
                }
            )
        return out

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
            timeout=self.settings.milvus_timeout_s,
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
        out: dict[int, np.ndarray] = {}
        for start in range(0, len(ids), _IN_BATCH):
            part = [int(i) for i in ids[start : start + _IN_BATCH]]
            rows = self.client.query(self.name, filter=f"id in {part}", output_fields=["vector"])
            out.update({int(r["id"]): np.asarray(r["vector"], dtype=np.float32) for r in rows})
        return out

    def ids(self, expression: str = "") -> list[int]:
        """Every id matching ``expression`` (built by :mod:`ris.common.filters`; "" for all)."""
        found: list[int] = []
        rows = self.client.query_iterator(
            self.name,
            batch_size=_IN_BATCH * 10,
            filter=expression or "id >= 0",  # ids are 63-bit: never negative
            output_fields=["id"],
            timeout=self.settings.milvus_timeout_s,
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
            output_fields=[],
            filter=expression,
            **self._search,
        )
        return [[(int(h["id"]), float(h["distance"])) for h in hits] for hits in result]

    def resolve(self, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        """The scalar fields (path, sha256, size, time) of each id that exists."""
        out: dict[int, dict[str, Any]] = {}
        for start in range(0, len(ids), _IN_BATCH):
            part = [int(i) for i in ids[start : start + _IN_BATCH]]
            rows = self.client.query(
                self.name,
                filter=f"id in {part}",
                output_fields=["id", *SCALAR_FIELDS],
                **self._read,
            )
            out.update({int(r["id"]): {k: r[k] for k in SCALAR_FIELDS} for r in rows})
        return out

    def count(self) -> int:
        """Number of rows (exact, counts unflushed rows too)."""
        rows = self.client.query(self.name, filter="", output_fields=["count(*)"], **self._read)
        return int(rows[0]["count(*)"])

    def index(self) -> dict[str, Any]:
        """The vector index as Milvus reports it (type, metric and build parameters)."""
        desc = dict(self.client.describe_index(self.name, "vector") or {})
        head = {k: desc.pop(k) for k in ("index_type", "metric_type", "state") if k in desc}
        for k in ("dim", "field_name", "index_name"):
            desc.pop(k, None)
        return {**head, "params": {k: v for k, v in desc.items() if not k.endswith("rows")}}

    def close(self) -> None:
        self.client.close()


class BoundedClient:
    """A MilvusClient whose every call is bounded by ``RIS_MILVUS_TIMEOUT_S`` (pymilvus's own
    retries included: unbounded, they spin for minutes against a dead server without a word)
    and logged when it fails. A Milvus Lite engine found dead is started again here, once per
    call, by the process that needs it."""

    def __init__(self, settings: Settings, create: bool = True) -> None:
        self.settings = settings
        self._create = create
        self._client = self._connect()

    def _connect(self) -> MilvusClient:
        """Raises :class:`MilvusConnectError` (one line, naming the URI) when Milvus does not
        answer or refuses the token; pymilvus's own multi-line error log is held back."""
        token = self.settings.milvus_token.get_secret_value() if self.settings.milvus_token else ""
        uri = milvus_uri(self.settings, self._create)
        # pymilvus configures these two loggers apart, each with its own handler.
        loggers = [logging.getLogger(n) for n in ("pymilvus", "pymilvus.milvus_client")]
        levels = [lg.level for lg in loggers]
        for lg in loggers:
            lg.setLevel(logging.CRITICAL)
        try:
            # A connection of its own: pymilvus shares one per URI and token between clients
            # unless named, and closing any of them closed it for all the others.
            alias = f"ris-{uuid.uuid4().hex}"
            return MilvusClient(uri=uri, token=token, alias=alias)  # waits 10 s to connect
        except Exception as exc:
            raise MilvusConnectError(_connect_failure(uri, exc)) from None
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)

    def _lite_engine_gone(self) -> bool:
        from ris.common.lite_server import engine_running

        if not self.settings.milvus_is_lite:
            return False
        db = os.path.abspath(os.path.expanduser(self.settings.milvus_uri))
        return not engine_running(Path(db))

    def _call(self, name: str, run: Callable[[MilvusClient], Any]) -> Any:
        """``run(client)``: a failure is logged; one from a dead Lite engine restarts it and
        runs again, once."""
        try:
            return run(self._client)
        except MilvusException as exc:
            if not self._lite_engine_gone():
                log.warning("Milvus %s on %s failed: %s", name, self.settings.milvus_uri, exc)
                raise
        log.warning(
            "Milvus Lite engine for %s is gone (during %s); starting it again",
            self.settings.milvus_uri,
            name,
        )
        with contextlib.suppress(Exception):
            self._client.close()
        self._client = self._connect()
        return run(self._client)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if name not in _RPC_CALLS:
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            timeout = self.settings.milvus_timeout_s * (10 if name in _SLOW_CALLS else 1)
            kwargs.setdefault("timeout", timeout)
            return self._call(name, lambda client: getattr(client, name)(*args, **kwargs))

        return call

    def write_rows(
        self, collection: str, rows: Sequence[ImageRow], timeout: float, insert: bool = False
    ) -> int:
        """Upsert (or insert) ``rows`` packed column by column (:mod:`ris.common.milvus_write`).
        A second attempt always upserts: the first may have been applied before it failed."""
        attempts = iter((insert, False))
        return self._call(
            "insert" if insert else "upsert",
            lambda client: write_rows(client, collection, rows, timeout, next(attempts)),
        )

    def close(self) -> None:
        self._client.close()


def milvus_client(settings: Settings, create: bool = True) -> Any:
    """A client of the configured Milvus (the shared Lite server, or a Milvus server), its
    calls bounded in time. Without ``create`` a missing Lite database is an error."""
    return BoundedClient(settings, create)


def _connect_failure(uri: str, exc: Exception) -> str:
    """One line saying why connecting to ``uri`` failed."""
    import grpc

    if isinstance(exc, grpc.RpcError) and exc.code() == grpc.StatusCode.UNAUTHENTICATED:
        return f"Milvus at {uri} refused the credentials in RIS_MILVUS_TOKEN ({exc.details()})"
    reason = getattr(exc, "message", "") or (
        exc.details() if isinstance(exc, grpc.RpcError) else str(exc)
    )
    return f"cannot connect to Milvus at {uri}: {' '.join(str(reason).split())}"


def drop_collection(settings: Settings, name: str | None = None) -> None:
    """Drop a collection (default: the configured one), whatever model it was built with."""
    try:
        client = milvus_client(settings, create=False)
    except CollectionNotFoundError:
        return  # no Lite database at all: nothing to drop, and none is created for it
    try:
        client.drop_collection(name or settings.collection)
    finally:
        client.close()


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
