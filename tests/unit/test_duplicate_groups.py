"""Grouping near-duplicate pairs (`ris duplicates`), without any service."""

from __future__ import annotations

from ris.common.duplicates import group_pairs, pair_set


def test_union_find_joins_transitively() -> None:
    groups = group_pairs([(1, 2, 0.9), (3, 4, 0.9), (2, 5, 0.95), (6, 6, 1.0)])
    assert groups == [[1, 2, 5], [3, 4]]
    assert pair_set(groups) == {(1, 2), (1, 5), (2, 5), (3, 4)}
