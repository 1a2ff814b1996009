"""Which Milvus a process talks to: the id of a row, the URI clients connect to, the store's
identity that tasks carry (a worker refuses a task for another Milvus), and the consistency
of reads that must see every acknowledged write."""

from __future__ import annotations

import hashlib
import os
import socket

from ris.common.errors import CollectionNotFoundError
from ris.common.settings import Settings


def path_id(path: str) -> int:
    """The row id for ``path``: a stable 63-bit hash of the absolute path or URL."""
    digest = hashlib.blake2b(path.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def milvus_uri(settings: Settings, create: bool = True) -> str:
    """The URI clients connect to: a Lite file is served once and shared by all processes.
    Without ``create`` a Lite file that does not exist is an error, not a new database."""
    if settings.milvus_is_lite:
        from ris.common.store.lite_server import ensure_lite_server

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
