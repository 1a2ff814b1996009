"""``ris eval`` run for real through the workers: on a toy data set (``toy_dataset``, in
both layouts) and on near-duplicates of the shipped photos."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.helpers import run_cli


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
