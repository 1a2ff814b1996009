"""Celery tasks: index a chunk of image paths, and answer a query image.

Each worker process loads the model, the pipeline and the Milvus client once
(:func:`context`), not per task.
"""

from __future__ import annotations

import base64
import logging
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import grpc
import numpy as np
from celery import Task
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_process_init
from celery.worker.request import Request
from pymilvus.exceptions import MilvusException

from ris.common.celery_app import INGEST_TASK, SEARCH_TASK, app
from ris.common.chunks import chunk_done, record_chunk_done
from ris.common.duplicates import DUPLICATES_TASK, pairs_of
from ris.common.filters import FilterError, SearchFilter
from ris.common.jobs import CONNECTION_ERRORS, JobTracker, redis_client
from ris.common.loading import file_stat
from ris.common.paths import encode_path
from ris.common.pipeline import EmbeddingPipeline
from ris.common.settings import Settings, get_settings
from ris.common.store import StoreCache, foreign_store, path_id

log = logging.getLogger(__name__)

# Failures of the vector store or the network are worth retrying; bad input is not.
# OSError covers ConnectionError and TimeoutError; Redis raises its own (progress writes);
# pymilvus lets a transport failure (a deadline passed on a cut link) out as grpc.RpcError.
RETRYABLE = (MilvusException, grpc.RpcError, OSError, *CONNECTION_ERRORS)
_SETTINGS = get_settings()


@dataclass
class WorkerContext:
    """What a worker process loads once."""

    settings: Settings
    pipeline: EmbeddingPipeline
    tracker: JobTracker
    stores: StoreCache


@lru_cache(maxsize=1)
def context() -> WorkerContext:
    """The process-wide worker context."""
    settings = get_settings()
    return WorkerContext(
        settings,
        EmbeddingPipeline(settings),
        JobTracker(redis_client(settings), settings.result_ttl_s),
        StoreCache(settings),
    )


@worker_process_init.connect
def _load_model(**_: Any) -> None:
    # Load in each prefork pool process at start, so the first task does not pay for it (a
    # threads-pool worker loads it before it starts: workers/main.py).
    context()


def _record_chunk_failure(tracker: JobTracker, job_id: str, paths: list[str], reason: str) -> None:
    log.error("chunk of job %s failed for good (%d paths): %s", job_id, len(paths), reason)
    try:
        tracker.mark(job_id, [], [], dict.fromkeys(paths, reason))
    except Exception:
        log.exception("could not record the failure of job %s", job_id)


class IngestRequest(Request):
    """Records the paths of a chunk killed by the hard time limit as failed (Celery marks only
    the task's result), so the job finishes instead of waiting for them."""

    def on_timeout(self, soft: bool, timeout: float) -> None:
        super().on_timeout(soft, timeout)
        if not soft:
            # The pool process was killed: record from the worker's main process.
            job_id, paths = _ingest_args(self.args, self.kwargs)
            tracker = JobTracker(redis_client(_SETTINGS), _SETTINGS.result_ttl_s)
            reason = f"not indexed: time limit of {timeout:g} s exceeded (RIS_TASK_TIME_LIMIT_S)"
            _record_chunk_failure(tracker, job_id, paths, reason)


class IngestTask(Task):
    """Reports a chunk whose retries ran out as failed, path by path, instead of hanging;
    runs a chunk sent twice (same task id) once."""

    Request = IngestRequest

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        job_id, _ = _ingest_args(args, kwargs)
        task_id = self.request.id
        tracker = context().tracker
        if task_id and chunk_done(tracker.r, job_id, task_id):
            log.info("job %s: chunk %s already done: skipped", job_id, task_id)
            return {"job_id": job_id, "skipped": "chunk already done"}
        result = super().__call__(*args, **kwargs)
        if task_id:
            record_chunk_done(tracker.r, job_id, task_id, tracker.ttl_s)
        return result

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        job_id, paths = _ingest_args(args, kwargs)
        if isinstance(exc, SoftTimeLimitExceeded):
            limit = _SETTINGS.task_soft_time_limit_s
            reason = f"not indexed: time limit of {limit:g} s exceeded (RIS_TASK_SOFT_TIME_LIMIT_S)"
        else:
            reason = f"not indexed: {type(exc).__name__}: {exc}"
        _record_chunk_failure(context().tracker, job_id, paths, reason)


def _refuse_chunk(ctx: WorkerContext, job_id: str, paths: list[str], reason: str) -> dict[str, Any]:
    """Report every path of a chunk meant for another store as failed, with the reason."""
    log.error("job %s: refused a chunk of %d paths: %s", job_id, len(paths), reason)
    ctx.tracker.mark(job_id, [], [], dict.fromkeys(paths, reason))
    return {"job_id": job_id, "indexed": 0, "unchanged": 0, "failed": len(paths)}


def _ingest_args(args: Any, kwargs: Any) -> tuple[str, list[str]]:
    params = dict(zip(("job_id", "paths"), args or (), strict=False)) | dict(kwargs or {})
    # A path that is not valid UTF-8 cannot be a Redis or Milvus key: its text form can.
    return str(params.get("job_id")), [encode_path(str(p)) for p in params.get("paths") or []]


@app.task(
    name=INGEST_TASK,
    bind=True,
    base=IngestTask,
    autoretry_for=RETRYABLE,
    retry_backoff=2,
    retry_backoff_max=_SETTINGS.retry_backoff_max_s,
    retry_jitter=True,
    max_retries=_SETTINGS.task_max_retries,
)
def ingest_chunk(
    self: Task,
    job_id: str,
    paths: list[str],
    collection: str | None = None,
    milvus: str | None = None,
) -> dict[str, Any]:
    """Read, embed and upsert ``paths`` into ``collection`` (default: the configured one) of
    the Milvus named by ``milvus`` (a store identity; another one is refused); record each
    path's outcome in the job's progress. A file whose size and mtime match the stored ones is
    not read; one whose content hash is stored already is not decoded again."""
    ctx = context()
    if refused := foreign_store(milvus, ctx.settings):
        return _refuse_chunk(ctx, job_id, paths, refused)
    started = time.perf_counter()
    paths = [encode_path(p) for p in paths]  # see _ingest_args
    spent: dict[str, float] = {}  # seconds per stage, for the log
    try:
        store = ctx.stores.get(collection)
        ids = [path_id(p) for p in paths]
        stored = store.known_stats(ids)
        known = {i: sha for i, (sha, _, _) in stored.items()}
        stats = {i: (size, mtime) for i, (_, size, mtime) in stored.items()}
    except RETRYABLE:
        ctx.stores.forget()
        raise
    spent["lookup"] = time.perf_counter() - started
    # The task's result state (AsyncResult.state) while the chunk is embedded.
    self.update_state(state="EMBEDDING", meta={"job_id": job_id, "paths": len(paths)})
    # Stat'ed before reading: a file changed meanwhile keeps the older stat, so the next sync
    # reads it again rather than trusting a stat newer than the content stored.
    stat = {p: file_stat(p, ctx.settings) for p in paths}
    same = {p for p in paths if stat[p] is not None and stats.get(path_id(p)) == stat[p]}
    results = ctx.pipeline([(p, None, known.get(path_id(p))) for p in paths if p not in same])
    spent["load+embed"] = time.perf_counter() - started - spent["lookup"]
    retry = [r for r in results if r.retryable]
    if retry:  # a URL that could not be fetched: the whole chunk is tried again later
        raise OSError(f"{retry[0].key}: {retry[0].error}")

    now_ms = int(time.time() * 1000)
    rows = [
        {
            "id": path_id(r.key),
            "vector": r.vector,
            "path": r.key,
            "sha256": r.sha256,
            "width": r.width,
            "height": r.height,
            "ingested_at": now_ms,
            "size": (stat[r.key] or (-1, -1))[0],
            "mtime_ns": (stat[r.key] or (-1, -1))[1],
        }
        for r in results
        if r.vector is not None
    ]
    try:
        store.upsert(rows)
        # Same content under a new stat (touched, copied back): remember the new stat.
        store.refresh_stats(
            {
                path_id(r.key): stat[r.key]
                for r in results
                if r.unchanged
                and stat[r.key] is not None
                and stats.get(path_id(r.key)) != stat[r.key]
            }
        )
    except RETRYABLE:
        ctx.stores.forget()
        raise
    spent["upsert"] = time.perf_counter() - started - sum(spent.values())
    indexed = [r["path"] for r in rows]
    unchanged = [p for p in paths if p in same] + [r.key for r in results if r.unchanged]
    failed = {r.key: str(r.error) for r in results if r.error is not None}
    ctx.tracker.mark(job_id, indexed, unchanged, failed)
    for path, reason in failed.items():
        log.warning("job %s: %s: %s", job_id, path, reason)
    log.info(
        "job %s: chunk of %d: %d indexed, %d unchanged, %d failed in %.2fs (%s)",
        job_id,
        len(paths),
        len(indexed),
        len(unchanged),
        len(failed),
        time.perf_counter() - started,
        " ".join(f"{stage} {t:.2f}s" for stage, t in spent.items()),
    )
    return {
        "job_id": job_id,
        "indexed": len(indexed),
        "unchanged": len(unchanged),
        "failed": len(failed),
    }


@app.task(
    name=SEARCH_TASK,
    autoretry_for=(MilvusException, ConnectionError),
    retry_backoff=1,
    max_retries=3,
)
def search(
    name: str,
    image_b64: str,
    top_k: int,
    collection: str | None = None,
    milvus: str | None = None,
    filters: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Embed one query image and return the ids and scores of its nearest indexed images
    (``milvus``: the store identity the query is for; another one is refused), among those
    matching ``filters`` (:class:`common.filters.SearchFilter` fields)."""
    ctx = context()
    if refused := foreign_store(milvus, ctx.settings):
        return {"query": name, "error": refused.replace("not indexed", "not searched")}
    try:
        expression = SearchFilter.from_task(filters).expression()
    except (FilterError, TypeError) as exc:
        return {"query": name, "error": f"bad filter: {exc}"}
    started = time.perf_counter()
    result = ctx.pipeline([(name, base64.b64decode(image_b64), None)])[0]
    if result.error is not None:
        return {"query": name, "error": result.error}
    embedded = time.perf_counter()
    try:
        store = ctx.stores.get(collection, create=False)  # a search never creates one
        hits = store.search(result.vector, top_k, expression)[0]
    except RETRYABLE:
        ctx.stores.forget()
        raise
    done = time.perf_counter()
    return {
        "query": name,
        "hits": [[i, score] for i, score in hits],
        "collection": store.name,
        "metric": ctx.settings.metric,
        "timing_ms": {
            "embed": round((embedded - started) * 1000, 2),
            "search": round((done - embedded) * 1000, 2),
        },
    }


@app.task(
    name=DUPLICATES_TASK,
    autoretry_for=(MilvusException, ConnectionError),
    retry_backoff=1,
    max_retries=3,
)
def duplicates_slice(
    ids: list[int],
    threshold: float,
    top_k: int,
    collection: str | None = None,
    milvus: str | None = None,
    filters: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Search the vectors of ``ids`` (one slice of the collection) against the rows matching
    ``filters`` and return the pairs scoring ``threshold`` or more: ``[a, b, score]``, a < b."""
    ctx = context()
    if refused := foreign_store(milvus, ctx.settings):
        return {"error": refused.replace("not indexed", "not searched")}
    if ctx.settings.metric == "L2":
        return {"error": "duplicates need an IP or COSINE collection (higher score: closer)"}
    try:
        expression = SearchFilter.from_task(filters).expression()
    except (FilterError, TypeError) as exc:
        return {"error": f"bad filter: {exc}"}
    started = time.perf_counter()
    pairs: set[tuple[int, int, float]] = set()
    try:
        store = ctx.stores.get(collection, create=False)
        vectors = store.vectors(ids)
        found = list(vectors)
        for start in range(0, len(found), ctx.settings.duplicates_search_batch):
            part = found[start : start + ctx.settings.duplicates_search_batch]
            hits = store.search(np.stack([vectors[i] for i in part]), top_k, expression)
            pairs.update(pairs_of(part, hits, threshold))
    except RETRYABLE:
        ctx.stores.forget()
        raise
    log.info(
        "duplicates: slice of %d: %d pairs in %.2fs",
        len(ids),
        len(pairs),
        time.perf_counter() - started,
    )
    return {"pairs": sorted(pairs), "searched": len(found)}
