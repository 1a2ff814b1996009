"""Inserts and upserts packed column by column, for speed.

pymilvus builds a write row by row in Python and copies each float of each vector into the
request on its own (1,280 Python floats per image); that packing, not the server, bounded
inserts to about 4,500 rows/s on a 2-core machine. Here each column goes in at once and the
vectors as one packed float32 buffer, which the protobuf parser copies whole: 2.5x the
inserts into a Milvus server (``benchmarks/query.py --milvus-uri``). The fields come from the
collection's own schema, so a collection made before a field was added takes rows without it.

This uses pymilvus 2.5's request types and its connection handler, which are not public API;
``pymilvus<2.6`` is pinned, and the store tests read back what this writes, on Milvus Lite and
on a Milvus server.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pymilvus import DataType
from pymilvus.client import ts_utils
from pymilvus.client.utils import check_status
from pymilvus.grpc_gen import common_pb2, milvus_pb2

from ris.common.contracts import ImageRow

_INTEGERS = {
    DataType.INT64: "long_data",
    DataType.INT32: "int_data",
    DataType.INT16: "int_data",
    DataType.INT8: "int_data",
}


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _float_vector_message(vectors: np.ndarray) -> bytes:
    """A ``FloatVector`` message in wire format: field 1, packed little-endian float32s."""
    raw = np.ascontiguousarray(vectors, dtype="<f4").tobytes()
    return b"\x0a" + _varint(len(raw)) + raw


def write_request(
    collection: str,
    fields: Sequence[dict[str, Any]],
    rows: Sequence[ImageRow],
    stamp: int = 0,
    insert: bool = False,
) -> milvus_pb2.UpsertRequest | milvus_pb2.InsertRequest:
    """The upsert (or insert) of ``rows`` into ``collection`` whose schema has ``fields``
    (pymilvus's field descriptions: name, type). Both requests have the same fields."""
    message = milvus_pb2.InsertRequest if insert else milvus_pb2.UpsertRequest
    request = message(collection_name=collection, num_rows=len(rows), schema_timestamp=stamp)
    for field in fields:
        name, kind = field["name"], field["type"]
        data = request.fields_data.add(field_name=name, type=kind)
        if kind == DataType.FLOAT_VECTOR:
            vectors = np.stack([np.asarray(r.vector, dtype=np.float32) for r in rows])
            data.vectors.dim = vectors.shape[1]
            data.vectors.float_vector.MergeFromString(_float_vector_message(vectors))
        elif kind in _INTEGERS:
            getattr(data.scalars, _INTEGERS[kind]).data.extend([getattr(r, name) for r in rows])
        elif kind == DataType.VARCHAR:
            data.scalars.string_data.data.extend([getattr(r, name) for r in rows])
        else:
            raise TypeError(f"field {name!r} of {collection!r}: type {kind!r} is not written here")
    return request


def write_rows(
    client: Any, collection: str, rows: Sequence[ImageRow], timeout: float, insert: bool = False
) -> int:
    """Upsert (or insert) ``rows`` through ``client`` (a pymilvus MilvusClient); returns the
    rows written."""
    handler = client._get_connection()

    def send() -> Any:
        schema, stamp = handler._get_schema_from_cache_or_remote(collection, timeout=timeout)
        request = write_request(collection, schema["fields"], rows, stamp, insert)
        stub = handler._stub.Insert if insert else handler._stub.Upsert
        return stub(request, timeout=timeout)

    response = send()
    if response.status.error_code == common_pb2.SchemaMismatch:
        # The collection changed since its schema was cached (as pymilvus does: re-read once).
        handler.update_schema(collection, timeout)
        response = send()
    check_status(response.status)
    # Session reads of this client see the write (pymilvus keeps this timestamp).
    ts_utils.update_collection_ts(collection, response.timestamp)
    return int(response.insert_cnt if insert else response.upsert_cnt)
