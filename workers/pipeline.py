"""The embedding pipeline: a towhee ``pipe`` of the project's own registered operators.

``items -> groups of half a batch -> ris/load (read, hash, decode: spread over the worker's
decoding threads or processes) -> window of two groups -> ris/embed (the process's one
inference thread)``

Nodes run concurrently: the model embeds one window while the next group is being loaded, and
several tasks' pipelines share one inference thread, which joins their windows into full
batches. Items move through the pipe in groups, so that the worker's own per-image work stays
small: that loop is what feeds a GPU.

Towhee's hub operators download code at run time; these are local and run offline. A bad
image never fails the pipe: loading turns it into a result carrying the reason.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from ris.common.models import get_spec
from ris.common.settings import Settings
from ris.workers import decode_pool
from ris.workers.inference import InferenceEngine, get_engine
from ris.workers.loading import Item, Loaded, Stat, load

# towhee logs every node start at INFO, once per call.
logging.getLogger("towhee").setLevel(logging.WARNING)


@dataclass(frozen=True)
class EmbedResult:
    """One item's outcome: its vector and image size, or unchanged, or the reason it failed."""

    key: str
    sha256: str = ""
    vector: np.ndarray | None = None
    width: int = 0
    height: int = 0
    unchanged: bool = False
    error: str | None = None
    retryable: bool = False  # a network failure: retry the task rather than fail the file
    stat: Stat | None = None  # (size, mtime_ns) of a local file, taken before it was read


class LoadOp:
    """towhee operator ``ris/load``: a group of items to :class:`Loaded` outcomes, spread over
    the worker's decoding processes, or its decoding threads.

    The spreading happens here: towhee 1.1.3 runs each node on one thread and ignores its
    ``parallel`` setting (``Node.initialize``: "TODO ... support parallelism").
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.size = get_spec(settings.model).input_size

    def __call__(self, group: Sequence[Item]) -> list[Loaded]:
        s = self.settings
        if s.decode_processes:
            return decode_pool.load_in_processes(group, s, self.size, s.decode_processes)
        return list(_decode_threads(s.decode_threads).map(lambda i: load(i, s, self.size), group))


class EmbedOp:
    """towhee operator ``ris/embed``: a window of loaded groups to results, their images
    embedded in one request to the process's inference engine."""

    def __init__(self, settings: Settings) -> None:
        # towhee deep-copies operator arguments: pass settings, look the engine up here.
        self.engine = get_engine(settings)

    def __call__(self, groups: Sequence[list[Loaded]]) -> list[EmbedResult]:
        loaded = [item for group in groups for item in group]
        images = [x for x in loaded if x.pixels is not None]
        pixels = [x.pixels for x in images if x.pixels is not None]
        vectors = list(self.engine.embed(np.stack(pixels))) if pixels else []
        by_key = {
            x.key: EmbedResult(x.key, x.sha256, vec, x.width, x.height, stat=x.stat)
            for x, vec in zip(images, vectors, strict=True)
        }
        return [
            by_key.get(x.key)
            or EmbedResult(
                x.key,
                x.sha256,
                unchanged=x.unchanged,
                error=x.error,
                retryable=x.retryable,
                stat=x.stat,
            )
            for x in loaded
        ]


_threads: dict[int, ThreadPoolExecutor] = {}
_threads_lock = threading.Lock()


def _decode_threads(n: int) -> ThreadPoolExecutor:
    """The process's decoding threads (PIL releases the GIL while it decodes and resizes)."""
    with _threads_lock:
        if n not in _threads:
            _threads[n] = ThreadPoolExecutor(n, thread_name_prefix="ris-decode")
        return _threads[n]


def _register() -> None:
    from towhee import register

    register(name="ris/load")(LoadOp)
    register(name="ris/embed")(EmbedOp)


class EmbeddingPipeline:
    """Embeds :class:`~ris.workers.loading.Item` s; the model is loaded once per process."""

    def __init__(self, settings: Settings) -> None:
        from towhee import ops, pipe

        _register()
        self.engine: InferenceEngine = get_engine(settings)
        if settings.decode_processes:
            decode_pool.start(settings.decode_processes, get_spec(settings.model).input_size)
        # Half a batch per load: the next half loads while a window is embedded.
        group = max(1, settings.batch_size // 2)
        self._pipe: Any = (
            pipe.input("items")
            .flat_map(
                "items",
                "group",
                lambda items: [items[i : i + group] for i in range(0, len(items), group)],
            )
            .map("group", "loaded", ops.ris.load(settings))
            .window("loaded", "results", 2, 2, ops.ris.embed(settings))
            .output("results")
        )

    def __call__(self, items: Sequence[Item]) -> list[EmbedResult]:
        """Every item's result, in input order."""
        if not items:
            return []
        by_key = {r.key: r for row in self._pipe(list(items)).to_list() for r in row[0]}
        return [by_key[item.key] for item in items]
