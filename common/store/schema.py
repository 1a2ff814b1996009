"""The collection's schema, in one place: its fields, the identity recorded in its description
(model, dimension, metric: opening it with another is refused), and its vector index."""

from __future__ import annotations

import json
import logging
from dataclasses import fields
from typing import Any

from pymilvus import DataType, MilvusClient

from ris.common.contracts import ImageRow
from ris.common.errors import SchemaMismatchError
from ris.common.settings import Settings
from ris.common.store.client import BoundedClient

log = logging.getLogger(__name__)

MAX_PATH_LENGTH = 4096
ROW_FIELDS = tuple(f.name for f in fields(ImageRow))
# The file's size and mtime when it was read: `ris sync` and the workers skip a file whose
# stat still matches without reading it. Collections created before these fields lack them.
STAT_FIELDS = ("size", "mtime_ns")
SCALAR_FIELDS = tuple(f for f in ROW_FIELDS if f not in ("id", "vector", *STAT_FIELDS))


def identity(model: str, dim: int, settings: Settings) -> dict[str, Any]:
    """What the collection's description records: vectors of another kind are refused."""
    return {"model": model, "dim": dim, "metric": settings.metric}


def create_collection(client: BoundedClient, name: str, expected: dict[str, Any]) -> None:
    """Create collection ``name`` for vectors of ``expected`` identity, unless it exists (or
    another process creates it meanwhile)."""
    if client.has_collection(name):
        return
    schema = MilvusClient.create_schema(auto_id=False, description=json.dumps(expected))
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=expected["dim"])
    schema.add_field("path", DataType.VARCHAR, max_length=MAX_PATH_LENGTH)
    schema.add_field("sha256", DataType.VARCHAR, max_length=64)
    schema.add_field("width", DataType.INT32)
    schema.add_field("height", DataType.INT32)
    schema.add_field("ingested_at", DataType.INT64)  # unix milliseconds
    schema.add_field("size", DataType.INT64)  # bytes, -1 for a URL
    schema.add_field("mtime_ns", DataType.INT64)  # -1 for a URL
    try:
        client.create_collection(name, schema)
        log.info("collection %s created (%s)", name, expected)
    except Exception:
        # Another process created it between our check and create: that is fine.
        if not client.has_collection(name):
            raise


def check_identity(client: BoundedClient, name: str, expected: dict[str, Any]) -> None:
    """Refuse a collection whose vectors are not of ``expected`` identity."""
    desc = client.describe_collection(name)
    try:
        found = json.loads(desc.get("description") or "{}")
    except ValueError:
        found = {}
    if found != expected:
        raise SchemaMismatchError(
            f"collection {name!r} holds {found or 'unknown vectors'}, but this process "
            f"uses {expected}. Use another RIS_COLLECTION, or drop it with "
            f"`ris drop --yes` to re-index with the new model."
        )


def has_stat_fields(client: BoundedClient, name: str) -> bool:
    """Whether the collection stores files' size and mtime (one created before they existed
    is still usable: its files are hashed)."""
    found = {f["name"] for f in client.describe_collection(name)["fields"]}
    return set(STAT_FIELDS) <= found


def ensure_index(client: BoundedClient, name: str, settings: Settings) -> None:
    """Index the vectors if nobody has; a collection without an index cannot be searched,
    so one the server refuses is an error, not a log line (and a later run with another
    RIS_INDEX_TYPE indexes the same collection)."""
    if client.list_indexes(name):
        return
    index = MilvusClient.prepare_index_params()
    index.add_index(
        "vector",
        index_type=settings.index_type,
        metric_type=settings.metric,
        params=settings.index_params,
    )
    try:
        client.create_index(name, index)
    except Exception as exc:
        if client.list_indexes(name):  # another process indexed it meanwhile
            return
        reason = getattr(exc, "message", "") or str(exc)
        raise SchemaMismatchError(
            f"Milvus refused index {settings.index_type} {settings.index_params} "
            f"for collection {name!r}: {reason}"
        ) from None
