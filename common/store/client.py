"""The Milvus client of every store: each call bounded by ``RIS_MILVUS_TIMEOUT_S`` (pymilvus's
own retries included: unbounded, they spin for minutes against a dead server without a word),
a failure logged, and a dead Milvus Lite engine started again.

Every pymilvus call the project makes is a method here that passes ``timeout=``: a call not
listed here does not exist on this client, so none can go out without a deadline.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pymilvus import CollectionSchema, MilvusClient
from pymilvus.exceptions import MilvusException
from pymilvus.milvus_client.index import IndexParams

from ris.common.contracts import ImageRow
from ris.common.errors import CollectionNotFoundError, MilvusConnectError
from ris.common.metrics import MILVUS_ERRORS
from ris.common.settings import Settings
from ris.common.store.identity import milvus_uri
from ris.common.store.write import write_rows

log = logging.getLogger(__name__)

# Calls that may legitimately take long (index builds, sealing segments, big writes on a busy
# server) get ten times the per-call timeout; a dead server is still noticed fast, by the
# reads that come first in every task.
_SLOW = 10


class BoundedClient:
    """A MilvusClient whose every call has a deadline and is logged when it fails. A Milvus
    Lite engine found dead is started again here, once per call, by the process that needs
    it."""

    def __init__(self, settings: Settings, create: bool = True) -> None:
        self.settings = settings
        self._create = create
        # An int: pymilvus bounds its own retries by the timeout only when it is an int (a
        # float one leaves them counted, for minutes against a dead server).
        self._timeout = int(settings.milvus_timeout_s)
        self.raw = self._connect()  # the pymilvus client: benchmarks and tests only

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
        from ris.common.store.lite_server import engine_running

        if not self.settings.milvus_is_lite:
            return False
        db = os.path.abspath(os.path.expanduser(self.settings.milvus_uri))
        return not engine_running(Path(db))

    def _call(self, name: str, run: Callable[[MilvusClient], Any]) -> Any:
        """``run(client)``: a failure is logged; one from a dead Lite engine restarts it and
        runs again, once."""
        try:
            return run(self.raw)
        except MilvusException as exc:
            MILVUS_ERRORS.inc()
            if not self._lite_engine_gone():
                log.warning("Milvus %s on %s failed: %s", name, self.settings.milvus_uri, exc)
                raise
        log.warning(
            "Milvus Lite engine for %s is gone (during %s); starting it again",
            self.settings.milvus_uri,
            name,
        )
        with contextlib.suppress(Exception):
            self.raw.close()
        self.raw = self._connect()
        return run(self.raw)

    # --- collections -----------------------------------------------------------------------
    def has_collection(self, name: str) -> bool:
        t = self._timeout
        return bool(self._call("has_collection", lambda c: c.has_collection(name, timeout=t)))

    def list_collections(self) -> list[str]:
        t = self._timeout
        return list(self._call("list_collections", lambda c: c.list_collections(timeout=t)))

    def create_collection(self, name: str, schema: CollectionSchema) -> None:
        t = self._timeout * _SLOW
        self._call(
            "create_collection", lambda c: c.create_collection(name, schema=schema, timeout=t)
        )

    def describe_collection(self, name: str) -> dict[str, Any]:
        t = self._timeout
        return dict(
            self._call("describe_collection", lambda c: c.describe_collection(name, timeout=t))
        )

    def load_collection(self, name: str) -> None:
        t = self._timeout * _SLOW
        self._call("load_collection", lambda c: c.load_collection(name, timeout=t))

    def drop_collection(self, name: str) -> None:
        t = self._timeout * _SLOW
        self._call("drop_collection", lambda c: c.drop_collection(name, timeout=t))

    def flush(self, name: str) -> None:
        t = self._timeout * _SLOW
        self._call("flush", lambda c: c.flush(name, timeout=t))

    # --- indexes ---------------------------------------------------------------------------
    def list_indexes(self, name: str) -> list[str]:
        t = self._timeout
        return list(self._call("list_indexes", lambda c: c.list_indexes(name, timeout=t)))

    def create_index(self, name: str, index: IndexParams) -> None:
        t = self._timeout * _SLOW
        self._call("create_index", lambda c: c.create_index(name, index, timeout=t))

    def describe_index(self, name: str, index_name: str) -> dict[str, Any]:
        t = self._timeout
        found = self._call(
            "describe_index", lambda c: c.describe_index(name, index_name, timeout=t)
        )
        return dict(found or {})

    # --- rows ------------------------------------------------------------------------------
    def query(self, name: str, filter: str, output_fields: list[str], **read: Any) -> list[dict]:
        t = self._timeout
        return list(
            self._call(
                "query",
                lambda c: c.query(
                    name, filter=filter, output_fields=output_fields, timeout=t, **read
                ),
            )
        )

    def query_iterator(
        self, name: str, batch_size: int, filter: str, output_fields: list[str], **read: Any
    ) -> Any:
        """A pymilvus query iterator; each of its ``next()`` calls has the deadline too."""
        t = self._timeout
        return self._call(
            "query_iterator",
            lambda c: c.query_iterator(
                name, batch_size=batch_size, filter=filter, output_fields=output_fields,
                timeout=t, **read,
            ),
        )  # fmt: skip

    def search(
        self,
        name: str,
        data: list[list[float]],
        limit: int,
        search_params: dict[str, Any],
        filter: str,
        **read: Any,
    ) -> list[list[dict]]:
        t = self._timeout
        return list(
            self._call(
                "search",
                lambda c: c.search(
                    name, data=data, limit=limit, search_params=search_params,
                    output_fields=[], filter=filter, timeout=t, **read,
                ),
            )
        )  # fmt: skip

    def delete(self, name: str, ids: list[int]) -> None:
        t = self._timeout * _SLOW
        self._call("delete", lambda c: c.delete(name, ids=ids, timeout=t))

    def write_rows(
        self, collection: str, rows: Sequence[ImageRow], timeout: float, insert: bool = False
    ) -> int:
        """Upsert (or insert) ``rows`` packed column by column (:mod:`ris.common.store.write`).
        A second attempt always upserts: the first may have been applied before it failed."""
        attempts = iter((insert, False))
        return int(
            self._call(
                "insert" if insert else "upsert",
                lambda c: write_rows(c, collection, rows, timeout, next(attempts)),
            )
        )

    def close(self) -> None:
        self.raw.close()


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
        client = BoundedClient(settings, create=False)
    except CollectionNotFoundError:
        return  # no Lite database at all: nothing to drop, and none is created for it
    try:
        client.drop_collection(name or settings.collection)
    finally:
        client.close()
