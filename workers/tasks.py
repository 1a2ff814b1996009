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

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_process_init
from celery.worker.request import Request
from pymilvus.exceptions import MilvusException

from common.celery_app import INGEST_TASK, SEARCH_TASK, app
from common.chunks import chunk_done, record_chunk_done
from common.jobs import JobTracker, redis_client
from common.paths import encode_path
from common.pipeline import EmbeddingPipeline
from common.settings import Settings, get_settings
from common.sources import SourceError, read_source
from common.store import StoreCache, path_id

log = logging.getLogger(__name__)

# Failures of the vector store or the network are worth retrying; bad input is not.
RETRYABLE = (MilvusException, OSError)  # OSError covers ConnectionError, TimeoutError
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
    # Load in each pool process at start, so the first task does not pay for it.
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
    self: Task, job_id: str, paths: list[str], collection: str | None = None
) -> dict[str, Any]:
    """Read, embed and upsert ``paths`` into ``collection`` (default: the configured one);
    record each path's outcome in the job's progress."""
    ctx = context()
    started = time.perf_counter()
    paths = [encode_path(p) for p in paths]  # see _ingest_args
    failed: dict[str, str] = {}
    payload: dict[str, tuple[bytes, str]] = {}
    for path in paths:
        try:
            payload[path] = read_source(path, ctx.settings)
        except SourceError as exc:
            failed[path] = str(exc)
    # The task's result state (AsyncResult.state) while the chunk is embedded.
    self.update_state(
        state="EMBEDDING", meta={"job_id": job_id, "paths": len(paths), "unreadable": len(failed)}
    )

    try:
        store = ctx.stores.get(collection)
        known = store.known_hashes([path_id(p) for p in payload])
    except RETRYABLE:
        ctx.stores.forget()
        raise
    unchanged = [p for p, (_, sha) in payload.items() if known.get(path_id(p)) == sha]
    todo = [(p, data) for p, (data, sha) in payload.items() if known.get(path_id(p)) != sha]

    now_ms = int(time.time() * 1000)
    rows: list[dict[str, Any]] = []
    for res in ctx.pipeline(todo):
        if res.error is not None:
            failed[res.key] = res.error
            continue
        rows.append(
            {
                "id": path_id(res.key),
                "vector": res.vector,
                "path": res.key,
                "sha256": payload[res.key][1],
                "width": res.width,
                "height": res.height,
                "ingested_at": now_ms,
            }
        )
    try:
        store.upsert(rows)
    except RETRYABLE:
        ctx.stores.forget()
        raise
    indexed = [r["path"] for r in rows]
    ctx.tracker.mark(job_id, indexed, unchanged, failed)
    for path, reason in failed.items():
        log.warning("job %s: %s: %s", job_id, path, reason)
    log.info(
        "job %s: chunk of %d: %d indexed, %d unchanged, %d failed in %.2fs",
        job_id,
        len(paths),
        len(indexed),
        len(unchanged),
        len(failed),
        time.perf_counter() - started,
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
def search(name: str, image_b64: str, top_k: int, collection: str | None = None) -> dict[str, Any]:
    """Embed one query image and return the ids and scores of its nearest indexed images."""
    ctx = context()
    started = time.perf_counter()
    result = ctx.pipeline([(name, base64.b64decode(image_b64))])[0]
    if result.error is not None:
        return {"query": name, "error": result.error}
    embedded = time.perf_counter()
    try:
        store = ctx.stores.get(collection)
        hits = store.search(result.vector, top_k)[0]
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
