"""``ris eval``'s arithmetic and its data set reader, without any service: the metrics on a
hand-checked case, and both data set layouts read alike."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from ris.producer.evaluation import average_precision, hit_ratio, load_dataset, score


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


def test_both_layouts_read_the_same_dataset(toy_dataset: Path) -> None:
    folders, table = load_dataset(toy_dataset), load_dataset(toy_dataset / "dataset.csv")
    assert sorted(map(str, folders.candidates)) == sorted(map(str, table.candidates))
    assert sorted(map(str, folders.queries)) == sorted(map(str, table.queries))
    assert len(folders.candidates) == 12 and len(folders.queries) == 3
