"""Celery tasks: index a chunk of image paths, answer a query image, find near duplicates.

:func:`register_tasks` puts them on an app, with the worker's settings. Each task takes its
request model and returns its answer model (:mod:`ris.common.contracts`). Each worker process
loads the model, the pipeline and the Milvus clients once (:meth:`Runtime.context`), not per
task.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
from celery import Celery, Task
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_process_init
from celery.worker.request import Request
from pydantic import ValidationError
from pymilvus.exceptions import MilvusException

from ris.common import metrics
from ris.common.chunks import ChunkLedger
from ris.common.contracts import (
    DUPLICATES_TASK,
    INGEST_TASK,
    SEARCH_TASK,
    ChunkOutcome,
    DuplicatesAnswer,
    DuplicatesSlice,
    ImageRow,
    IngestChunk,
    SearchAnswer,
    SearchRequest,
)
from ris.common.duplicates import pairs_of
from ris.common.filters import FilterError, SearchFilter
from ris.common.jobs import CONNECTION_ERRORS, JobTracker, redis_client
from ris.common.settings import Settings
from ris.common.store import StoreCache, foreign_store, path_id, store_identity
from ris.workers.claims import Claim, RowClaims, claim_scope, new_owner
from ris.workers.loading import Item
from ris.workers.pipeline import EmbeddingPipeline

log = logging.getLogger(__name__)

# Failures of the vector store or the network are worth retrying; bad input is not.
# OSError covers ConnectionError and TimeoutError; Redis raises its own (progress writes);
# pymilvus lets a transport failure (a deadline passed on a cut link) out as grpc.RpcError.
RETRYABLE = (MilvusException, grpc.RpcError, OSError, *CONNECTION_ERRORS)


@dataclass
class WorkerContext:
    """What a worker process loads once."""

    settings: Settings
    pipeline: EmbeddingPipeline
    tracker: JobTracker
    ledger: ChunkLedger
    claims: RowClaims
    stores: StoreCache


class Runtime:
    """The worker's settings and, once loaded in this process, its :class:`WorkerContext`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._context: WorkerContext | None = None
        self._lock = threading.Lock()  # a threads-pool worker's tasks load it once

    def context(self) -> WorkerContext:
        """The process's context, loaded on first use."""
        with self._lock:
            if self._context is None:
                settings = self.settings
                client = redis_client(settings)
                self._context = WorkerContext(
                    settings,
                    EmbeddingPipeline(settings),
                    JobTracker(client, settings.result_ttl_s),
                    ChunkLedger(client, settings.result_ttl_s, settings.lease_s),
                    # Waiting for other chunks' claims ends with the task's own time.
                    RowClaims(client, settings.lease_s, settings.task_soft_time_limit_s or 600),
                    StoreCache(settings),
                )
            return self._context


class WorkerTask(Task):
    """A task of this worker: ``runtime`` is set by :func:`register_tasks`."""

    runtime: Runtime


def _chunk(args: Any, kwargs: Any) -> IngestChunk | None:
    """The chunk an ingest message carries; None (logged) if it carries none."""
    try:
        return IngestChunk.model_validate((kwargs or {}).get("chunk", (args or [None])[0]))
    except ValidationError as exc:
        log.error("an ingest message without a valid chunk: %s", exc)
        return None


def _record_chunk_failure(
    tracker: JobTracker, ledger: ChunkLedger, chunk: IngestChunk, task_id: str, reason: str
) -> None:
    log.error(
        "chunk of job %s failed for good (%d paths): %s", chunk.job_id, len(chunk.paths), reason
    )
    metrics.CHUNKS.labels("failed").inc()
    metrics.count_outcomes(0, 0, [reason] * len(chunk.paths))
    try:
        tracker.mark(chunk.job_id, [], [], dict.fromkeys(chunk.paths, reason))
        if chunk.number is not None:
            ledger.finish(chunk.job_id, chunk.number, task_id)
    except Exception:
        log.exception("could not record the failure of job %s", chunk.job_id)


class IngestRequest(Request):
    """Records the paths of a chunk killed by the hard time limit as failed (Celery marks only
    the task's result), so the job finishes instead of waiting for them."""

    def on_timeout(self, soft: bool, timeout: float) -> None:
        super().on_timeout(soft, timeout)
        if not soft and (chunk := _chunk(self.args, self.kwargs)):
            # The pool process was killed: record from the worker's main process.
            settings = self.task.runtime.settings
            client = redis_client(settings)
            tracker = JobTracker(client, settings.result_ttl_s)
            ledger = ChunkLedger(client, settings.result_ttl_s, settings.lease_s)
            reason = f"not indexed: time limit of {timeout:g} s exceeded (RIS_TASK_TIME_LIMIT_S)"
            _record_chunk_failure(tracker, ledger, chunk, self.id, reason)


class IngestTask(WorkerTask):
    """Reports a chunk whose retries ran out as failed, path by path, instead of hanging;
    runs a chunk once however often it arrives (sent twice, sent again by the recovery, or
    redelivered), and marks it done in the job's ledger."""

    Request = IngestRequest

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        chunk = _chunk(args, kwargs)
        number = chunk.number if chunk else None
        ledger = self.runtime.context().ledger
        if chunk and number is not None and ledger.is_done(chunk.job_id, number):
            log.info("job %s: chunk %s already done: skipped", chunk.job_id, self.request.id)
            ledger.finish(chunk.job_id, number, self.request.id)  # drops this copy's hold
            metrics.CHUNKS.labels("skipped").inc()
            skipped = ChunkOutcome(job_id=chunk.job_id, skipped="chunk already done")
            return skipped.model_dump(mode="json")
        result = super().__call__(*args, **kwargs)
        if chunk and number is not None:
            ledger.finish(chunk.job_id, number, self.request.id)
        metrics.CHUNKS.labels("done").inc()
        return result

    def on_retry(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        metrics.CHUNKS.labels("retried").inc()
        _count_error(exc)

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        chunk = _chunk(args, kwargs)
        if chunk is None:
            return
        if isinstance(exc, SoftTimeLimitExceeded):
            limit = self.runtime.settings.task_soft_time_limit_s
            reason = f"not indexed: time limit of {limit:g} s exceeded (RIS_TASK_SOFT_TIME_LIMIT_S)"
        else:
            reason = f"not indexed: {type(exc).__name__}: {exc}"
        ctx = self.runtime.context()
        _record_chunk_failure(ctx.tracker, ctx.ledger, chunk, task_id, reason)
        _count_error(exc)


def _count_error(exc: BaseException) -> None:
    """Count a Milvus or Redis failure that cost a chunk a retry (or its last one)."""
    if isinstance(exc, (MilvusException, grpc.RpcError)):
        metrics.MILVUS_ERRORS.inc()
    elif isinstance(exc, CONNECTION_ERRORS):
        metrics.REDIS_ERRORS.inc()


def register_tasks(app: Celery, settings: Settings) -> Runtime:
    """Register the worker's tasks on ``app``, configured from ``settings``; returns the
    runtime whose context each worker process loads at start."""
    runtime = Runtime(settings)
    common = {"bind": True, "pydantic": True, "runtime": runtime}
    app.task(
        name=INGEST_TASK,
        base=IngestTask,
        autoretry_for=RETRYABLE,
        retry_backoff=2,
        retry_backoff_max=settings.retry_backoff_max_s,
        retry_jitter=True,
        max_retries=settings.task_max_retries,
        **common,
    )(ingest_chunk)
    for name, fun in ((SEARCH_TASK, search), (DUPLICATES_TASK, duplicates_slice)):
        app.task(
            name=name,
            base=WorkerTask,
            autoretry_for=(MilvusException, ConnectionError),
            retry_backoff=1,
            max_retries=3,
            **common,
        )(fun)

    def load(**_: Any) -> None:
        # Load in each prefork pool process at start, so the first task does not pay for it
        # (a threads-pool worker loads it before it starts: workers/main.py).
        runtime.context()

    worker_process_init.connect(load, weak=False)
    return runtime


def _refuse_chunk(ctx: WorkerContext, chunk: IngestChunk, reason: str) -> ChunkOutcome:
    """Report every path of a chunk meant for another store as failed, with the reason."""
    log.error("job %s: refused a chunk of %d paths: %s", chunk.job_id, len(chunk.paths), reason)
    ctx.tracker.mark(chunk.job_id, [], [], dict.fromkeys(chunk.paths, reason))
    return ChunkOutcome(job_id=chunk.job_id, failed=len(chunk.paths))


def ingest_chunk(self: IngestTask, chunk: IngestChunk) -> ChunkOutcome:
    """Read, embed and upsert the chunk's paths into its collection of the Milvus it names
    (another one is refused); record each path's outcome in the job's progress. A file whose
    size and mtime match the stored ones is not read; one whose content hash is stored
    already is not decoded again."""
    ctx = self.runtime.context()
    if refused := foreign_store(chunk.milvus, ctx.settings):
        return _refuse_chunk(ctx, chunk, refused)
    ids = {p: path_id(p) for p in chunk.paths}
    # Claimed before the look-up: only a row claimed from before it found the id absent may
    # be inserted (ris.workers.claims says why).
    scope = claim_scope(store_identity(ctx.settings), chunk.collection or ctx.settings.collection)
    with ctx.claims.holding(scope, ids.values(), new_owner(self.request.id)) as held:
        return _ingest(self, ctx, chunk, ids, held)


def _ingest(
    self: IngestTask,
    ctx: WorkerContext,
    chunk: IngestChunk,
    ids: dict[str, int],
    held: Claim,
) -> ChunkOutcome:
    """:func:`ingest_chunk` under the chunk's claims (``held``: those it could take)."""
    job_id, paths = chunk.job_id, chunk.paths
    started = time.perf_counter()
    spent: dict[str, float] = {}  # seconds per stage, for the log
    try:
        store = ctx.stores.get(chunk.collection)
        stored = store.known_stats(list(ids.values()))
    except RETRYABLE:
        ctx.stores.forget()
        raise
    spent["lookup"] = time.perf_counter() - started
    # The task's result state (AsyncResult.state) while the chunk is embedded.
    self.update_state(state="EMBEDDING", meta={"job_id": job_id, "paths": len(paths)})
    # A file whose stat matches the stored one is not read; one whose hash does, not decoded.
    known_sha = {i: sha for i, (sha, _, _) in stored.items()}
    known_stat = {i: (size, mtime) for i, (_, size, mtime) in stored.items()}
    results = ctx.pipeline(
        [Item(p, None, known_sha.get(ids[p]), known_stat.get(ids[p])) for p in paths]
    )
    spent["read_decode_embed"] = time.perf_counter() - started - spent["lookup"]
    retry = [r for r in results if r.retryable]
    if retry:  # a URL that could not be fetched: the whole chunk is tried again later
        raise OSError(f"{retry[0].key}: {retry[0].error}")

    now_ms = int(time.time() * 1000)
    rows = [
        ImageRow(
            id=ids[r.key],
            vector=r.vector,
            path=r.key,
            sha256=r.sha256,
            width=r.width,
            height=r.height,
            ingested_at=now_ms,
            size=(r.stat or (-1, -1))[0],
            mtime_ns=(r.stat or (-1, -1))[1],
        )
        for r in results
        if r.vector is not None
    ]
    # Rows looked up as absent are inserted, not upserted (ImageStore.upsert says why). A chunk
    # tried before may have written some of them unseen by its look-up (a write still in
    # flight when it failed or its worker died): it upserts everything.
    retried = self.request.retries or (self.request.delivery_info or {}).get("redelivered")
    new_ids = set() if retried else {ids[r.key] for r in results if ids[r.key] not in stored}
    try:
        held.write(store, rows, new_ids)  # fenced: ris.workers.claims
        # Same content under a new stat (touched, copied back): remember the new stat.
        store.refresh_stats(
            {
                ids[r.key]: r.stat
                for r in results
                if r.unchanged and r.stat is not None and r.stat != known_stat.get(ids[r.key])
            }
        )
    except RETRYABLE:
        ctx.stores.forget()
        raise
    spent["milvus_write"] = time.perf_counter() - started - sum(spent.values())
    indexed = [r.path for r in rows]
    unchanged = [r.key for r in results if r.unchanged]
    failed = {r.key: str(r.error) for r in results if r.error is not None}
    ctx.tracker.mark(job_id, indexed, unchanged, failed)
    metrics.count_outcomes(len(indexed), len(unchanged), list(failed.values()))
    for stage, seconds in spent.items():
        metrics.STAGE_SECONDS.labels(stage).observe(seconds)
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
    return ChunkOutcome(
        job_id=job_id, indexed=len(indexed), unchanged=len(unchanged), failed=len(failed)
    )


def search(self: WorkerTask, request: SearchRequest) -> SearchAnswer:
    """Embed one query image and return the ids and scores of its nearest indexed images in
    the store the request names (another Milvus is refused), among those matching its
    filters."""
    ctx = self.runtime.context()
    name = request.name
    if refused := foreign_store(request.milvus, ctx.settings):
        return SearchAnswer(query=name, error=refused.replace("not indexed", "not searched"))
    try:
        expression = SearchFilter.from_task(request.filters).expression()
    except (FilterError, TypeError) as exc:
        return SearchAnswer(query=name, error=f"bad filter: {exc}")
    started = time.perf_counter()
    result = ctx.pipeline([Item(name, base64.b64decode(request.image_b64))])[0]
    if result.error is not None or result.vector is None:
        return SearchAnswer(query=name, error=result.error or "not embedded")
    embedded = time.perf_counter()
    try:
        store = ctx.stores.get(request.collection, create=False)  # a search never creates one
        hits = store.search(result.vector, request.top_k, expression)[0]
    except RETRYABLE:
        ctx.stores.forget()
        raise
    done = time.perf_counter()
    return SearchAnswer(
        query=name,
        hits=hits,
        collection=store.name,
        metric=ctx.settings.metric,
        timing_ms={
            "embed": round((embedded - started) * 1000, 2),
            "search": round((done - embedded) * 1000, 2),
        },
    )


def duplicates_slice(self: WorkerTask, request: DuplicatesSlice) -> DuplicatesAnswer:
    """Search the vectors of the slice's ids against the rows matching its filters and
    return the pairs scoring its threshold or more."""
    ctx = self.runtime.context()
    if refused := foreign_store(request.milvus, ctx.settings):
        return DuplicatesAnswer(error=refused.replace("not indexed", "not searched"))
    if ctx.settings.metric == "L2":
        return DuplicatesAnswer(
            error="duplicates need an IP or COSINE collection (higher score: closer)"
        )
    try:
        expression = SearchFilter.from_task(request.filters).expression()
    except (FilterError, TypeError) as exc:
        return DuplicatesAnswer(error=f"bad filter: {exc}")
    ids, top_k, threshold = request.ids, request.top_k, request.threshold
    started = time.perf_counter()
    pairs: set[tuple[int, int, float]] = set()
    try:
        store = ctx.stores.get(request.collection, create=False)
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
    return DuplicatesAnswer(pairs=sorted(pairs), searched=len(found))
