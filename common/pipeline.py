"""The embedding pipeline: a towhee ``pipe`` of the project's own registered operators.

``items -> decode (threads, one image each) -> window of batch_size -> embed -> results``

Nodes run concurrently: the model embeds one window while the next is being decoded.

Towhee's hub operators download code at run time; these are local and run offline. A bad
image never fails the pipe: decode turns it into a result carrying the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from common.images import DecodedImage, ImageError, decode
from common.models import Embedder, get_embedder, get_spec
from common.settings import Settings

log = logging.getLogger(__name__)
# towhee logs every node start at INFO, once per call.
logging.getLogger("towhee").setLevel(logging.WARNING)


@dataclass(frozen=True)
class EmbedResult:
    """One input's outcome: a vector and the image size, or the reason it failed."""

    key: str
    vector: np.ndarray | None = None
    width: int = 0
    height: int = 0
    error: str | None = None


class DecodeOp:
    """towhee operator ``ris/decode``: ``(key, bytes)`` to ``(key, DecodedImage | error)``."""

    def __init__(self, model: str, max_pixels: int) -> None:
        self.spec = get_spec(model)
        self.max_pixels = max_pixels

    def __call__(self, key: str, data: bytes) -> tuple[str, DecodedImage | str]:
        try:
            return key, decode(
                data, self.spec.input_size, self.spec.mean, self.spec.std, self.max_pixels
            )
        except ImageError as exc:
            return key, str(exc)
        except Exception as exc:  # never let one file fail the batch
            log.exception("unexpected error decoding %s", key)
            return key, f"cannot decode: {type(exc).__name__}: {exc}"


class EmbedOp:
    """towhee operator ``ris/embed``: all decoded items of a window to results, in batches."""

    def __init__(self, settings: Settings) -> None:
        # towhee deep-copies operator arguments: pass settings, look the model up here.
        self.embedder = get_embedder(settings)
        self.batch_size = settings.batch_size

    def __call__(
        self, keys: Sequence[str], decoded: Sequence[DecodedImage | str]
    ) -> list[EmbedResult]:
        results: dict[int, EmbedResult] = {}
        good = [(i, d) for i, d in enumerate(decoded) if isinstance(d, DecodedImage)]
        for i, d in enumerate(decoded):
            if isinstance(d, str):
                results[i] = EmbedResult(keys[i], error=d)
        for start in range(0, len(good), self.batch_size):
            batch = good[start : start + self.batch_size]
            vectors = self.embedder.embed(np.stack([d.pixels for _, d in batch]))
            for (i, d), vec in zip(batch, vectors, strict=True):
                results[i] = EmbedResult(keys[i], vec, d.width, d.height)
        return [results[i] for i in range(len(decoded))]


def _register() -> None:
    from towhee import register

    register(name="ris/decode")(DecodeOp)
    register(name="ris/embed")(EmbedOp)


class EmbeddingPipeline:
    """Embeds ``(key, image bytes)`` items; the model is loaded once per process."""

    def __init__(self, settings: Settings) -> None:
        from towhee import ops, pipe

        _register()
        self.embedder: Embedder = get_embedder(settings)
        self._pipe: Any = (
            pipe.input("items")
            .flat_map("items", ("key", "data"), lambda items: list(items))
            .map(
                ("key", "data"),
                ("key", "decoded"),
                ops.ris.decode(settings.model, settings.max_image_pixels),
                config={"parallel": max(1, settings.decode_threads)},
            )
            .window(
                ("key", "decoded"),
                "results",
                settings.batch_size,
                settings.batch_size,
                ops.ris.embed(settings),
            )
            .output("results")
        )

    def __call__(self, items: Sequence[tuple[str, bytes]]) -> list[EmbedResult]:
        """Embed every item; failures come back as results with ``error`` set, in input order."""
        if not items:
            return []
        by_key = {r.key: r for row in self._pipe(list(items)).to_list() for r in row[0]}
        return [by_key[key] for key, _ in items]
