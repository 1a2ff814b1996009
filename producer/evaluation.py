"""``ris eval``: retrieval quality of the real system (workers, Milvus) on a labelled dataset,
with the metrics of Towhee's reverse image search notebooks, and a near-duplicate mode.

Datasets: ``train/<label>/*`` + ``test/<label>/*`` folders (the tutorial's layout), or a CSV
with ``path,label`` columns (``id`` optional, like the tutorial's ``reverse_image_search.csv``)
whose query images are the rows with ``split`` = test/query, or else a ``test/<label>/*``
folder beside the CSV.
"""

from __future__ import annotations

import csv
import hashlib
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

from ris.common.errors import DatasetError
from ris.producer.client import Producer
from ris.producer.inputs import expand_inputs, image_extensions


@dataclass(frozen=True)
class Labelled:
    path: str
    label: str


@dataclass
class Dataset:
    candidates: list[Labelled]  # indexed
    queries: list[Labelled]  # searched with


def _labelled_folder(root: Path) -> list[Labelled]:
    return [
        Labelled(str(p.resolve()), label.name)
        for label in sorted(d for d in root.iterdir() if d.is_dir())
        for p in sorted(label.iterdir())
        if p.suffix.lower() in image_extensions()
    ]


def load_dataset(path: str | Path) -> Dataset:
    """Read a dataset in the folder or CSV layout (see the module docstring)."""
    path = Path(path)
    if path.is_dir():
        if not (path / "train").is_dir() or not (path / "test").is_dir():
            raise DatasetError(f"{path}: expected train/<label>/ and test/<label>/ folders")
        return Dataset(_labelled_folder(path / "train"), _labelled_folder(path / "test"))
    if path.suffix.lower() != ".csv":
        raise DatasetError(f"{path}: not a folder or a .csv file")
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not {"path", "label"} <= set(rows[0]):
        raise DatasetError(f"{path}: the CSV needs 'path' and 'label' columns")
    base = path.parent

    def entry(row: dict[str, str]) -> Labelled:
        return Labelled(str((base / row["path"]).resolve()), row["label"])

    if "split" in rows[0]:
        is_query = [r["split"].strip().lower() in ("test", "query") for r in rows]
        return Dataset(
            [entry(r) for r, q in zip(rows, is_query, strict=True) if not q],
            [entry(r) for r, q in zip(rows, is_query, strict=True) if q],
        )
    if not (base / "test").is_dir():
        raise DatasetError(f"{path}: no 'split' column and no test/<label>/ folder beside it")
    return Dataset([entry(r) for r in rows], _labelled_folder(base / "test"))


# --- metrics -------------------------------------------------------------------------------
def precision_at(hits: Sequence[bool], n: int) -> float:
    """Fraction of the first ``n`` results that share the query's label."""
    return sum(hits[:n]) / n


def hit_ratio(hits: Sequence[bool], relevant: int, k: int) -> float:
    """Relevant results in the top ``k`` over the most there could be, ``min(k, relevant)``:
    the fraction of the top-k sharing the label, when a label has at least k candidates."""
    return sum(hits[:k]) / min(k, relevant) if relevant else 0.0


def average_precision(hits: Sequence[bool], relevant: int, k: int) -> float:
    """AP@k: the mean of precision@i over the ranks i of relevant results, over min(k, relevant)."""
    found, total = 0, 0.0
    for rank, hit in enumerate(hits[:k], 1):
        if hit:
            found += 1
            total += found / rank
    return total / min(k, relevant) if relevant else 0.0


@dataclass
class Report:
    """Retrieval quality and speed of one evaluation."""

    model: str
    candidates: int
    queries: int
    top_k: int
    precision: dict[int, float] = field(default_factory=dict)
    mean_hit_ratio: float = 0.0
    mean_average_precision: float = 0.0
    ingest_per_s: float = 0.0
    queries_per_s: float = 0.0
    failed: dict[str, str] = field(default_factory=dict)


def score(
    ranked: Sequence[Sequence[str]], query_labels: Sequence[str], counts: Counter[str], k: int
) -> dict[str, Any]:
    """Metrics over queries, given each query's ranked result labels and how many candidates
    carry each label."""
    flags = [[lab == q for lab in r] for r, q in zip(ranked, query_labels, strict=True)]
    n = max(1, len(flags))
    return {
        "precision": {p: sum(precision_at(f, p) for f in flags) / n for p in (1, 5, 10) if p <= k},
        "mean_hit_ratio": sum(
            hit_ratio(f, counts[q], k) for f, q in zip(flags, query_labels, strict=True)
        )
        / n,
        "mean_average_precision": sum(
            average_precision(f, counts[q], k) for f, q in zip(flags, query_labels, strict=True)
        )
        / n,
    }


# --- running it through the system ---------------------------------------------------------
def _collection_for(name: str, producer: Producer) -> str:
    digest = hashlib.sha1(f"{name}|{producer.settings.model}".encode()).hexdigest()[:10]
    return f"eval_{digest}"


def _index(
    producer: Producer, paths: list[str], collection: str, queue: str
) -> tuple[float, dict[str, str]]:
    """Index ``paths`` into a fresh ``collection``; returns images/s and the failures."""
    producer.drop_collection(collection)  # results must not depend on an earlier run
    producer.store_for(collection, create=True)
    started = time.perf_counter()
    job = producer.ingest(paths, queue=queue, collection=collection)
    producer.wait(job)
    producer.store_for(collection).flush()
    return len(paths) / (time.perf_counter() - started), producer.failures(job)


def evaluate(
    producer: Producer, dataset: Dataset, name: str, top_k: int = 10, queue: str = "cpu"
) -> Report:
    """Index the candidates, search with every query, and score the rankings."""
    collection = _collection_for(name, producer)
    candidates = [c.path for c in dataset.candidates]
    ingest_rate, failures = _index(producer, candidates, collection, queue)
    labels = {c.path: c.label for c in dataset.candidates if c.path not in failures}
    started = time.perf_counter()
    results = producer.search(
        [q.path for q in dataset.queries], top_k, queue, timeout_s=600, collection=collection
    )
    query_rate = len(results) / (time.perf_counter() - started)
    ranked, query_labels = [], []
    for q, res in zip(dataset.queries, results, strict=True):
        if res.error:
            failures[q.path] = res.error
            continue
        ranked.append([labels.get(h.path or "", "") for h in res.hits])
        query_labels.append(q.label)
    metrics = score(ranked, query_labels, Counter(labels.values()), top_k)
    return Report(
        model=producer.settings.model,
        candidates=len(labels),
        queries=len(ranked),
        top_k=top_k,
        ingest_per_s=ingest_rate,
        queries_per_s=query_rate,
        failed=failures,
        **metrics,
    )


# --- near duplicates -----------------------------------------------------------------------
def _overlay_text(img: Image.Image) -> Image.Image:
    out = img.copy()
    draw = ImageDraw.Draw(out)
    size = max(12, img.height // 8)
    font = ImageFont.load_default(size=size)
    draw.rectangle((0, img.height - size * 2, img.width, img.height), fill=(20, 20, 20))
    draw.text((size // 2, img.height - size * 1.7), "© reposted 2026", fill="white", font=font)
    return out


def _crop(img: Image.Image) -> Image.Image:
    w, h = img.size
    return img.crop((w * 15 // 100, h * 15 // 100, w * 85 // 100, h * 85 // 100))


# Each transform turns an original into the copy a user would search with.
TRANSFORMS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "crop 70%": _crop,
    "resize 40%": lambda im: im.resize((max(1, im.width * 2 // 5), max(1, im.height * 2 // 5))),
    "jpeg q=15": lambda im: im,  # the quality is applied when the copy is saved
    "blur r=3": lambda im: im.filter(ImageFilter.GaussianBlur(3)),
    "rotate 15deg": lambda im: im.rotate(15, expand=True, fillcolor=(255, 255, 255)),
    "colour shift": lambda im: ImageEnhance.Brightness(ImageEnhance.Color(im).enhance(0.4)).enhance(
        1.25
    ),
    "flip": ImageOps.mirror,
    "text overlay": _overlay_text,
}


def make_copies(originals: list[str], dest: Path) -> dict[str, list[tuple[str, str]]]:
    """Write every transformed copy; returns ``transform -> [(copy path, original path)]``."""
    out: dict[str, list[tuple[str, str]]] = {}
    for t_index, (name, transform) in enumerate(TRANSFORMS.items()):
        folder = dest / f"t{t_index}"
        folder.mkdir(parents=True, exist_ok=True)
        pairs = []
        for i, original in enumerate(originals):
            with Image.open(original) as img:
                copy = transform(ImageOps.exif_transpose(img).convert("RGB"))
            target = folder / f"{i:05d}.jpg"
            copy.save(target, "JPEG", quality=15 if name.startswith("jpeg") else 90)
            pairs.append((str(target), original))
        out[name] = pairs
    return out


@dataclass
class NearDuplicateReport:
    model: str
    originals: int
    distractors: int
    top1: dict[str, float]

    @property
    def overall(self) -> float:
        return sum(self.top1.values()) / max(1, len(self.top1))


def evaluate_near_duplicates(
    producer: Producer,
    folder: str,
    workdir: Path,
    distractors: list[str] | None = None,
    queue: str = "cpu",
) -> NearDuplicateReport:
    """Index the originals (among distractors); query with each transformed copy; top-1
    accuracy per transform: the "find the original source" use of reverse image search."""
    originals = [p for p in expand_inputs([folder]) if os.path.isfile(p)]
    if not originals:
        raise DatasetError(f"{folder}: no images")
    copies = make_copies(originals, workdir)
    distractors = distractors or []
    collection = _collection_for(f"near-dup|{folder}|{len(distractors)}", producer)
    _index(producer, originals + distractors, collection, queue)
    top1 = {}
    for name, pairs in copies.items():
        results = producer.search(
            [c for c, _ in pairs], 1, queue, timeout_s=600, collection=collection
        )
        correct = sum(
            bool(r.hits) and r.hits[0].path == original
            for r, (_, original) in zip(results, pairs, strict=True)
        )
        top1[name] = correct / len(pairs)
    return NearDuplicateReport(producer.settings.model, len(originals), len(distractors), top1)
