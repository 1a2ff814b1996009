"""Every error the project raises on purpose, in one tree.

Each carries what its callers need to report it in one line: ``exit_code`` for the CLI
(caught once, in :mod:`ris.producer.cli`) and ``http_status`` for the API (one exception
handler, :mod:`ris.producer.api.app`). Where code elsewhere relies on a built-in base
(``ValueError`` for bad input, ``ConnectionError`` for a retryable outage), a class keeps it
as a second base.
"""

from __future__ import annotations


class RisError(Exception):
    """The root: a failure whose message says what went wrong, shown as one line."""

    exit_code = 1
    http_status = 500


# --- what the user gave ------------------------------------------------------------------------
class InvalidInput(RisError, ValueError):
    """A request that cannot be carried out as given (bad image, filter, path, dataset...).
    Exit 1 as every failed command (2 is the command line's own usage errors)."""

    http_status = 422


class ImageError(InvalidInput):
    """An image that cannot be decoded safely; the message says why."""


class TooLarge(ImageError):
    """An upload or image past a configured limit."""

    http_status = 413


class FilterError(InvalidInput):
    """A search filter that cannot be applied; the message says why."""


class SourceError(InvalidInput):
    """A path or URL that may not, or cannot, be read; the message says why."""


class QueryError(InvalidInput):
    """A query image that cannot be searched; the message says why."""


class SyncError(InvalidInput):
    """A root ``ris sync`` cannot walk; the message says why."""


class DatasetError(InvalidInput):
    """A dataset whose layout ``ris eval`` does not understand; the message says why."""


class AccessError(RisError, PermissionError):
    """A path or URL outside what the API may open (``RIS_ALLOWED_ROOTS``...)."""

    http_status = 403


# --- the vector store -------------------------------------------------------------------------
class StoreError(RisError):
    """A store that cannot be used as asked; the message says why."""

    http_status = 409


class SchemaMismatchError(StoreError):
    """The collection was built with another model, dimension or metric."""


class CollectionNotFoundError(StoreError):
    """Reading a collection (search, info, delete) that does not exist: never created then."""

    http_status = 404


# --- services that do not answer ----------------------------------------------------------------
class Unavailable(RisError, ConnectionError):
    """A service (Redis, Milvus, the workers) that does not answer; worth retrying."""

    http_status = 503


class MilvusConnectError(Unavailable):
    """Milvus did not answer, or refused the credentials in RIS_MILVUS_TOKEN."""


class LiteServerError(Unavailable):
    """A Milvus Lite server could not be started or reached; the message says why."""


class RedisUnavailable(Unavailable):
    """Redis did not answer within ``RIS_REDIS_CHECK_TIMEOUT_S``."""


class NoWorkerError(Unavailable):
    """No worker consumes the job's queue, and none did for ``RIS_NO_WORKER_WAIT_S``."""

    exit_code = 3


# --- work that failed on a worker ------------------------------------------------------------
class DuplicatesError(RisError):
    """A ``ris duplicates`` slice a worker could not search; the message says why."""

    http_status = 502
