"""The producer side of the queue: enqueue ingest jobs, submit queries, collect results.

It sends tasks by name with the request models of :mod:`ris.common.contracts` and reads their
answers back as those models, so the producer never imports the model or worker code.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import itertools
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from celery import Celery
from celery.exceptions import TimeoutError as NoAnswer
from celery.result import AsyncResult
from kombu.exceptions import OperationalError
from pydantic import ValidationError
from redis import RedisError

from ris.common.celery_app import make_app
from ris.common.chunks import ChunkLedger, send_chunk
from ris.common.contracts import SEARCH_TASK, IngestChunk, SearchAnswer, SearchRequest
from ris.common.errors import NoWorkerError, QueryError
from ris.common.filters import SearchFilter
from ris.common.jobs import JobProgress, JobTracker, redis_client
from ris.common.paths import FILE_SCHEME, decode_file_url, encode_path
from ris.common.settings import Settings
from ris.common.store import Hit, ImageStore, StoreCache, drop_collection, store_identity

log = logging.getLogger(__name__)


_QUERY_PREFIX = "ris:query:"


@dataclass
class QueryResult:
    """The ranked matches of one query image."""

    query: str
    hits: list[Hit] = field(default_factory=list)
    error: str | None = None
    timing_ms: dict[str, float] = field(default_factory=dict)


def _batched(items: Iterable[str], n: int) -> Iterator[list[str]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, n)):
        yield chunk


def poll_result(result: AsyncResult, timeout_s: float | None) -> object:
    """The task's return value, read from the result backend by polling (a GET each time).
    Not ``result.get()``, whose Redis pub/sub subscription now and then never delivered a
    stored result (seen in 2 of 4 full test runs: 44 queries all answered by the worker
    within 18 s, one of them still waited for at 120 s); a GET cannot miss it."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    pause = 0.002
    while not result.ready():
        if deadline is not None and time.monotonic() > deadline:
            raise NoAnswer(f"no answer within {timeout_s} s")
        time.sleep(pause)
        pause = min(pause * 2, 0.05)
    if result.failed():
        raise (
            result.result
            if isinstance(result.result, Exception)
            else RuntimeError(str(result.result))
        )
    return result.result


def _release(result: AsyncResult) -> None:
    """Stop listening for ``result`` now, and detach it from the backend: left to
    ``AsyncResult.__del__``, the unsubscribe runs while the interpreter shuts down and prints
    an ImportError traceback."""
    # Redis gone: there is no subscription left to cancel.
    with contextlib.suppress(OSError, RedisError, OperationalError):
        result.backend.remove_pending_result(result)
    result.backend = None


class Producer:
    """Submits work to the workers and reads its progress and results."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app: Celery = make_app(settings)
        client = redis_client(settings)
        self.tracker = JobTracker(client, settings.result_ttl_s)
        self.ledger = ChunkLedger(client, settings.result_ttl_s, settings.lease_s)
        self._stores = StoreCache(settings)

    @property
    def store(self) -> ImageStore:
        """The configured collection (it must exist: reading never creates one)."""
        return self._stores.get(create=False)

    def store_for(self, collection: str | None, create: bool = False) -> ImageStore:
        """The store of ``collection`` (default: the configured one), created if missing only
        with ``create``."""
        return self._stores.get(collection, create)

    def target(self, collection: str | None) -> dict[str, str]:
        """The :class:`ris.common.contracts.StoreTarget` fields of a task: the worker refuses
        a task for another Milvus, and uses the producer's collection, not its own default."""
        return {
            "collection": collection or self.settings.collection,
            "milvus": store_identity(self.settings),
        }

    def reconnect(self) -> None:
        """Forget the Milvus clients (after an error): the next use connects afresh."""
        self._stores.forget()

    def drop_collection(self, collection: str) -> None:
        """Drop ``collection`` (all its rows) if it exists."""
        drop_collection(self.settings, collection)
        self._stores.forget(collection)

    # --- ingestion -------------------------------------------------------------------------
    def job_id_for(self, inputs: list[str], queue: str, collection: str | None = None) -> str:
        """A job id derived from the inputs, so re-running an interrupted ``ris ingest``
        resumes its job (or waits for it, if it was enqueued completely); once that job has
        finished, a fresh (suffixed) id."""
        target = collection or self.settings.collection
        paths = (i if "://" in i else os.path.abspath(i) for i in inputs)
        key = "\0".join([queue, target, *paths])
        base = hashlib.sha1(key.encode("utf-8", "surrogateescape")).hexdigest()[:12]
        job_id, n = base, 1
        # A job enqueued completely but not finished is the one to wait for, not to repeat.
        while self.tracker.is_complete(job_id) and self.progress(job_id).finished:
            n += 1
            job_id = f"{base}-{n}"
        return job_id

    def ingest(
        self,
        paths: Iterable[str],
        queue: str = "cpu",
        job_id: str | None = None,
        on_enqueued: Callable[[int], None] | None = None,
        collection: str | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> str:
        """Enqueue ``paths`` in chunks and return the job id (into ``collection``, default the
        configured one). Each chunk is recorded in the job's ledger before it is sent, so the
        cluster finishes the job whoever waits for it (:mod:`ris.workers.recovery`).

        Resumable: if ``job_id`` names a job whose enqueueing was interrupted, the chunks it
        already sent are skipped (inputs expand in a stable order), and a chunk sent but not
        counted is sent again under the same task id, which a worker runs once; a job
        enqueued completely is not sent again, only watched.
        ``should_stop`` is asked between chunks: True stops enqueueing there (resumable).
        """
        job_id = job_id or os.urandom(6).hex()
        if self.tracker.is_complete(job_id):
            return job_id
        skip_chunks, total = self.tracker.resume_point(job_id) or (0, 0)
        self.tracker.create(job_id, queue)
        chunks = skip_chunks
        target = self.target(collection)
        for number, paths_of_chunk in enumerate(
            _batched(paths, self.settings.chunk_size_for(queue))
        ):
            if number < skip_chunks:
                continue
            if should_stop and should_stop():
                return job_id
            chunk = IngestChunk(job_id=job_id, paths=paths_of_chunk, number=number, **target)
            self.ledger.record(chunk)
            send_chunk(self.app, chunk, queue)
            total += len(paths_of_chunk)
            chunks = number + 1
            self.tracker.set_total(job_id, total, chunks, finished=False)
            if on_enqueued:
                on_enqueued(total)
        self.tracker.set_total(job_id, total, chunks, finished=True)
        return job_id

    def progress(self, job_id: str) -> JobProgress:
        return self.tracker.progress(job_id)

    def failures(self, job_id: str) -> dict[str, str]:
        return self.tracker.failures(job_id)

    def wait(
        self,
        job_id: str,
        timeout_s: float | None = None,
        poll_s: float = 0.25,
        on_progress: Callable[[JobProgress], None] | None = None,
        queue: str | None = None,
    ) -> JobProgress:
        """Block until every path of the job is processed (the cluster sends lost chunks
        again: nothing here does); TimeoutError past ``timeout_s``. With ``queue``,
        NoWorkerError once no worker consumed it for ``no_worker_wait_s`` without progress."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        last_processed = -1
        no_worker = self.settings.no_worker_wait_s
        last_consumer = last_check = time.monotonic()
        while True:
            progress = self.progress(job_id)
            if on_progress:
                on_progress(progress)
            if progress.finished:
                return progress
            now = time.monotonic()
            if progress.processed != last_processed:
                last_processed, last_consumer = progress.processed, now
            elif queue and no_worker > 0 and now - last_check >= min(2.0, no_worker / 3):
                last_check = now
                if self.consumers(queue):
                    last_consumer = now
                elif now - last_consumer >= no_worker:
                    raise NoWorkerError(
                        f"no worker consumes queue {queue!r} (none for {no_worker:g} s): start "
                        f"one with `ris worker --queue {queue}`; job {job_id} stays queued "
                        f"({progress.pending} pending): run the same command again to wait "
                        f"for it, or `ris status {job_id}`"
                    )
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(
                    f"job {job_id} not finished after {timeout_s}s: "
                    f"{progress.pending} of {progress.total} pending"
                )
            time.sleep(poll_s)

    # --- queries ---------------------------------------------------------------------------
    def submit_query(
        self,
        image_path: str,
        top_k: int,
        queue: str = "cpu",
        collection: str | None = None,
        filters: SearchFilter | None = None,
    ) -> str:
        """Send one query image (its bytes travel with the task) and return the task id.
        ``image_path`` may be a path's ``file://`` text form (a name that is not UTF-8)."""
        if image_path.startswith(FILE_SCHEME):
            image_path = decode_file_url(image_path)
        try:
            size = os.path.getsize(image_path)
            if size > self.settings.max_query_bytes:
                raise QueryError(
                    f"{image_path}: {size:,} bytes exceeds the query limit of "
                    f"{self.settings.max_query_bytes:,}"
                )
            with open(image_path, "rb") as fh:
                data = fh.read()
        except IsADirectoryError:
            raise QueryError(f"{image_path}: is a directory, not an image") from None
        except OSError as exc:
            raise QueryError(f"{image_path}: {exc.strerror or exc}") from None
        return self.submit_query_bytes(
            os.path.abspath(image_path), data, top_k, queue, collection, filters
        )

    def submit_query_bytes(
        self,
        name: str,
        data: bytes,
        top_k: int,
        queue: str = "cpu",
        collection: str | None = None,
        filters: SearchFilter | None = None,
    ) -> str:
        """Send a query image given as bytes (``name`` labels it) and return the task id;
        ``filters`` restrict the matches (typed values: the worker builds the expression)."""
        if len(data) > self.settings.max_query_bytes:
            raise QueryError(
                f"{name}: {len(data):,} bytes exceeds the query limit of "
                f"{self.settings.max_query_bytes:,}"
            )
        task_id = f"q-{hashlib.sha1(data).hexdigest()[:8]}-{os.urandom(4).hex()}"
        # Recorded so that `ris result` tells a queued query from an id nobody submitted.
        self.tracker.r.set(f"{_QUERY_PREFIX}{task_id}", 1, ex=self.settings.result_ttl_s)
        request = SearchRequest(
            name=encode_path(name),
            image_b64=base64.b64encode(data).decode("ascii"),
            top_k=top_k,
            filters=filters.to_task() if filters else None,
            **self.target(collection),
        )
        self.app.send_task(
            SEARCH_TASK,
            args=(request.model_dump(mode="json"),),
            queue=queue,
            task_id=task_id,
            argsrepr=f"(query={os.path.basename(name)!r}, top_k={top_k})",
        )
        return task_id

    def collect(
        self, task_id: str, timeout_s: float | None = 120.0, query: str | None = None
    ) -> QueryResult:
        """Wait for a query task and resolve its result ids to paths stored in Milvus.

        A task that failed on the worker (after its retries) is a result with an error, so one
        bad query does not hide the others; no answer within ``timeout_s`` is a TimeoutError,
        an id that no producer submitted (or whose result expired) at once a result with an
        error.
        """
        result = AsyncResult(task_id, app=self.app)
        try:
            if result.state == "PENDING" and not self.tracker.r.exists(f"{_QUERY_PREFIX}{task_id}"):
                return QueryResult(
                    query or task_id,
                    error=f"unknown task id {task_id!r}: never submitted, or its result expired",
                )
            answer = SearchAnswer.model_validate(poll_result(result, timeout_s))
        except NoAnswer:
            raise TimeoutError(
                f"query {task_id} not answered within {timeout_s:g} s: is a worker listening "
                "on its queue? (`ris info` lists the workers that answer)"
            ) from None
        except Exception as exc:
            return QueryResult(query or task_id, error=f"search failed: {exc}")
        finally:
            _release(result)
        return self.resolve(answer)

    def query_state(self, task_id: str) -> tuple[str, QueryResult | None]:
        """A query task's Celery state and, once it ran, its resolved result, without waiting.

        KeyError when the task finished but is not a query (e.g. an ingest chunk's id).
        """
        async_result = AsyncResult(task_id, app=self.app)
        state = str(async_result.state)
        if state == "SUCCESS":
            try:
                answer = SearchAnswer.model_validate(async_result.result)
            except ValidationError:
                raise KeyError(f"{task_id} is not a query task") from None
            return state, self.resolve(answer)
        if state == "FAILURE":
            return state, QueryResult(task_id, error=f"search failed: {async_result.result}")
        return state, None

    def resolve(self, answer: SearchAnswer) -> QueryResult:
        """Turn a query's ``(id, score)`` hits into hits with their paths, read from the
        collection the worker searched."""
        if answer.error:
            return QueryResult(answer.query, error=answer.error)
        fields = self.store_for(answer.collection).resolve([i for i, _ in answer.hits])
        hits = [Hit(i, s, **fields[i]) for i, s in answer.hits if i in fields]
        return QueryResult(answer.query, hits, timing_ms=dict(answer.timing_ms))

    def search(
        self,
        image_paths: list[str],
        top_k: int,
        queue: str = "cpu",
        timeout_s: float | None = 120.0,
        collection: str | None = None,
        filters: SearchFilter | None = None,
        on_result: Callable[[QueryResult], None] | None = None,
    ) -> list[QueryResult]:
        """Submit all queries at once (the workers answer them in parallel), then collect
        them in order; ``on_result`` is called as each one is collected (progress)."""
        submitted: list[tuple[str, str | None, str | None]] = []
        for path in image_paths:
            try:
                task_id = self.submit_query(path, top_k, queue, collection, filters)
                submitted.append((path, task_id, None))
            except QueryError as exc:
                submitted.append((path, None, str(exc)))
        results = []
        for path, sent, err in submitted:
            res = self.collect(sent, timeout_s, path) if sent else QueryResult(path, error=err)
            results.append(res)
            if on_result:
                on_result(res)
        return results

    def consumers(self, queue: str, timeout_s: float = 1.0) -> list[str]:
        """Names of the workers that answer and consume ``queue``."""
        try:
            replies = self.app.control.inspect(timeout=timeout_s).active_queues() or {}
        except (OSError, RedisError, OperationalError):
            return []
        return sorted(
            name
            for name, queues in replies.items()
            if any(q.get("name") == queue for q in queues or [])
        )

    def workers_online(self, timeout_s: float = 1.0) -> list[str]:
        """Names of the workers that answer a ping (none while the broker is unreachable)."""
        try:
            replies = self.app.control.ping(timeout=timeout_s) or []
        except (OSError, RedisError, OperationalError):
            return []
        return sorted(name for reply in replies for name in reply)
