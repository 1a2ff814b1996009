"""``ris eval``: the metrics on a hand-checked case, and real runs through the workers."""

from __future__ import annotations

import csv
import json
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from ris.producer.evaluation import average_precision, hit_ratio, load_dataset, score
from tests.helpers import run_cli


@pytest.mark.unit
def test_metrics_on_a_hand_checked_case() -> None:
    counts = Counter({"a": 3, "b": 3, "c": 2})
    ranked = [["a", "b", "a", "c", "a"], ["b", "c", "a", "a", "b"]]
    # Query 1 (a): hits at ranks 1, 3, 5 -> AP = (1/1 + 2/3 + 3/5) / min(5, 3); HR = 3/3.
    # Query 2 (c): one hit at rank 2 -> AP = (1/2) / min(5, 2); HR = 1/2.
    assert average_precision([True, False, True, False, True], 3, 5) == pytest.approx(
        (1 + 2 / 3 + 3 / 5) / 3
    )
    assert hit_ratio([False, True, False, False, False], 2, 5) == 0.5
    metrics = score(ranked, ["a", "c"], counts, k=5)
    assert metrics["precision"] == {1: 0.5, 5: pytest.approx((3 / 5 + 1 / 5) / 2)}
    assert metrics["mean_hit_ratio"] == pytest.approx((1.0 + 0.5) / 2)
    assert metrics["mean_average_precision"] == pytest.approx(((1 + 2 / 3 + 3 / 5) / 3 + 0.25) / 2)


def _variants(img: Image.Image) -> list[Image.Image]:
    w, h = img.size
    return [
        img,
        ImageOps.mirror(img),
        img.crop((w // 10, h // 10, w, h)),
        img.resize((w // 2, h // 2)),
        ImageOps.mirror(img).crop((0, 0, w * 9 // 10, h * 9 // 10)),
    ]


@pytest.fixture(scope="module")
def toy_dataset(photos: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three classes, each one photo's variants: four indexed, one query per class."""
    root = tmp_path_factory.mktemp("toy")
    rows = []
    for label in ("chelsea", "coffee", "rocket"):
        src = next(photos.glob(f"{label}.*"))
        with Image.open(src) as img:
            variants = _variants(img.convert("RGB"))
        for i, variant in enumerate(variants):
            split = "test" if i == len(variants) - 1 else "train"
            target = root / split / label / f"{label}_{i}.jpg"
            target.parent.mkdir(parents=True, exist_ok=True)
            variant.save(target, quality=90)
            rows.append(
                {
                    "id": len(rows),
                    "path": str(target.relative_to(root)),
                    "label": label,
                    "split": split,
                }
            )
    with open(root / "dataset.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["id", "path", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return root


@pytest.mark.unit
def test_both_layouts_read_the_same_dataset(toy_dataset: Path) -> None:
    folders, table = load_dataset(toy_dataset), load_dataset(toy_dataset / "dataset.csv")
    assert sorted(map(str, folders.candidates)) == sorted(map(str, table.candidates))
    assert sorted(map(str, folders.queries)) == sorted(map(str, table.queries))
    assert len(folders.candidates) == 12 and len(folders.queries) == 3


def test_ris_eval_through_the_workers(toy_dataset: Path, worker: subprocess.Popen[bytes]) -> None:
    by_folder = json.loads(run_cli("eval", str(toy_dataset), "-k", "4", "--json").stdout)
    assert by_folder["candidates"] == 12 and by_folder["queries"] == 3
    # Each query is a variant of one photo whose four other variants are indexed: a working
    # model ranks all four first.
    assert by_folder["precision"]["1"] == 1.0
    assert by_folder["mean_hit_ratio"] == 1.0
    assert by_folder["mean_average_precision"] == 1.0
    assert by_folder["ingest_per_s"] > 0 and by_folder["queries_per_s"] > 0
    by_csv = json.loads(
        run_cli("eval", str(toy_dataset / "dataset.csv"), "-k", "4", "--json").stdout
    )
    for key in ("precision", "mean_hit_ratio", "mean_average_precision"):
        assert by_csv[key] == by_folder[key]


def test_bad_dataset_is_a_clear_error(tmp_path: Path) -> None:
    proc = run_cli("eval", str(tmp_path), check=False)
    assert proc.returncode == 1
    assert "expected train/<label>/ and test/<label>/ folders" in proc.stderr


def test_near_duplicates_of_the_shipped_photos(
    photos: Path, worker: subprocess.Popen[bytes]
) -> None:
    report = json.loads(run_cli("eval", "--near-duplicates", str(photos), "--json").stdout)
    assert report["originals"] == len(list(photos.iterdir()))
    assert len(report["top1"]) == 8
    assert report["overall"] >= 0.9, report["top1"]
