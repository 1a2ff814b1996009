"""Near-duplicate groups across a collection, without an n x n matrix.

The producer splits the collection's ids into slices; a worker task searches each slice's
vectors against the whole collection (top-k, then a score threshold) and returns the pairs it
found; the producer merges the pairs into groups with a union-find. A worker holds one slice
of vectors and its search results, the producer only ids and pairs: memory grows with the
slice and the number of duplicates, never with n squared.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

# Candidates per image searched: groups larger than this are still joined transitively.
DUPLICATES_TOP_K = 16


class UnionFind:
    """Disjoint sets of ids, with path halving and union by size."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}
        self.size: dict[int, int] = {}

    def find(self, x: int) -> int:
        parent = self.parent
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size.get(ra, 1) < self.size.get(rb, 1):
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] = self.size.get(ra, 1) + self.size.pop(rb, 1)

    def groups(self) -> list[list[int]]:
        """Every set of two or more ids, each sorted, largest first."""
        out: dict[int, list[int]] = {}
        for x in self.parent:
            out.setdefault(self.find(x), []).append(x)
        return sorted((sorted(g) for g in out.values() if len(g) > 1), key=lambda g: (-len(g), g))


def pairs_of(
    query_ids: Iterable[int], hits: Iterable[list[tuple[int, float]]], threshold: float
) -> Iterator[tuple[int, int, float]]:
    """``(a, b, score)`` with ``a < b`` for every hit at or above ``threshold`` that is not the
    query itself (IP/COSINE scores: higher is closer)."""
    for qid, found in zip(query_ids, hits, strict=True):
        for hid, score in found:
            if hid != qid and score >= threshold:
                yield (min(qid, hid), max(qid, hid), round(float(score), 6))


def group_pairs(pairs: Iterable[tuple[int, int, float]]) -> list[list[int]]:
    """Merge pairs into groups (transitively: a~b and b~c make one group)."""
    uf = UnionFind()
    for a, b, _ in pairs:
        uf.union(int(a), int(b))
    return uf.groups()


def pair_set(groups: Iterable[Iterable[object]]) -> set[tuple[object, object]]:
    """Every unordered pair inside each group (for precision and recall of pairs)."""
    out: set[tuple[object, object]] = set()
    for group in groups:
        members = sorted(group, key=str)
        for i, a in enumerate(members):
            for b in members[i + 1 :]:
                out.add((a, b))
    return out
