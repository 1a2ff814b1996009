"""One long-lived thread per process owns the model; every model call runs on it.

Measured on an H200: torch on CUDA runs efficientnet-lite0 at 7,936 images/s from one
persistent thread and at 53 from a fresh thread per call (cuDNN's per-thread set-up on every
convolution), and towhee runs an operator on a thread it starts for each call. So the embed
operator hands its images to this thread and waits. Requests of concurrent tasks are joined
into batches of up to ``batch_size`` images, so batches fill across chunk boundaries.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent import futures
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from ris.common.metrics import MODEL_BATCH_SIZE
from ris.common.settings import Settings
from ris.workers.embedder import Embedder, model_key

log = logging.getLogger(__name__)


@dataclass
class _Request:
    images: np.ndarray  # uint8 (N, S, S, 3)
    done: Future[np.ndarray] = field(default_factory=Future)


_STOP = _Request(np.zeros((0, 1, 1, 3), np.uint8))


class InferenceEngine:
    """Runs an :class:`Embedder` on a thread of its own; :meth:`embed` may be called from any
    thread."""

    def __init__(self, settings: Settings) -> None:
        self.batch_size = settings.batch_size
        self.wait_s = settings.batch_wait_ms / 1000
        # A model call that outlasts a whole task is hung (a wedged device): its callers give
        # up rather than wait forever, as Celery's threads pool enforces no time limit.
        self.answer_within_s = settings.task_soft_time_limit_s
        self.batches = 0  # model calls so far
        self._queue: queue.SimpleQueue[_Request] = queue.SimpleQueue()
        self._carry: _Request | None = None
        loaded: Future[Embedder] = Future()
        self._thread = threading.Thread(
            target=self._serve, args=(settings, loaded), name="ris-inference", daemon=True
        )
        self._thread.start()
        # The model loads on the engine's thread; a load error is raised here.
        self.embedder = loaded.result()

    @property
    def dim(self) -> int:
        return self.embedder.dim

    def embed(self, images: np.ndarray) -> np.ndarray:
        """Unit vectors ``(N, dim)`` of uint8 images ``(N, S, S, 3)``, computed on the engine's
        thread."""
        if len(images) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        if not self._thread.is_alive():
            raise RuntimeError("the inference thread has stopped")
        request = _Request(images)
        self._queue.put(request)
        try:
            return request.done.result(timeout=self.answer_within_s)
        except futures.TimeoutError:  # not the builtin one before Python 3.11
            raise TimeoutError(
                f"the model gave no answer in {self.answer_within_s:g} s "
                "(RIS_TASK_SOFT_TIME_LIMIT_S): its thread is stuck"
            ) from None

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the engine's thread once the requests already queued are answered."""
        self._queue.put(_STOP)
        self._thread.join(timeout_s)

    def _serve(self, settings: Settings, loaded: Future[Embedder]) -> None:
        try:
            embedder = Embedder(settings)
            # A first call at full batch pays, before any task waits on it, for what the first
            # real batch would: on CUDA the caching allocator's blocks, kernels loaded on first
            # use and the pinned host buffer (the first chunks of a GPU worker took 2-3 s
            # longer).
            size = embedder.spec.input_size
            embedder.embed(np.zeros((self.batch_size, size, size, 3), np.uint8))
        except BaseException as exc:
            loaded.set_exception(exc)
            return
        loaded.set_result(embedder)
        while (requests := self._gather()) is not None:
            self._run(embedder, requests)

    def _gather(self) -> list[_Request] | None:
        """The next requests to run together: up to ``batch_size`` images, waiting at most
        ``wait_s`` for more to arrive; None once stopped."""
        first = self._carry or self._queue.get()
        self._carry = None
        if first is _STOP:
            return None
        requests, count = [first], len(first.images)
        deadline = time.monotonic() + self.wait_s
        while count < self.batch_size:
            try:
                nxt = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if nxt is _STOP or count + len(nxt.images) > self.batch_size:
                self._carry = nxt  # runs next time
                break
            requests.append(nxt)
            count += len(nxt.images)
        return requests

    def _run(self, embedder: Embedder, requests: list[_Request]) -> None:
        images = (
            requests[0].images
            if len(requests) == 1
            else np.concatenate([r.images for r in requests])
        )
        try:
            # One request may hold more than a batch.
            vectors = np.concatenate(
                [
                    embedder.embed(images[i : i + self.batch_size])
                    for i in range(0, len(images), self.batch_size)
                ]
            )
        except BaseException as exc:  # the callers see the model's error; the thread goes on
            log.exception("model call failed for %d images", len(images))
            for r in requests:
                r.done.set_exception(exc)
            return
        self.batches += 1
        for i in range(0, len(images), self.batch_size):
            MODEL_BATCH_SIZE.observe(min(self.batch_size, len(images) - i))
        offset = 0
        for r in requests:
            r.done.set_result(vectors[offset : offset + len(r.images)])
            offset += len(r.images)


_ENGINES: dict[tuple[object, ...], InferenceEngine] = {}
_ENGINES_LOCK = threading.Lock()


def get_engine(settings: Settings) -> InferenceEngine:
    """The process-wide engine for these settings: one model, one thread per process."""
    key = (*model_key(settings), settings.batch_size, settings.batch_wait_ms)
    with _ENGINES_LOCK:
        if key not in _ENGINES:
            _ENGINES[key] = InferenceEngine(settings)
        return _ENGINES[key]
