"""Batch queries: many query images' ranked matches written to one CSV file."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from typing import Any

CSV_COLUMNS = ("query", "rank", "score", "match", "error")


def write_results_csv(results: Sequence[Any], out: str) -> int:
    """Write one row per match (query path, rank, score, match path), and one row with the
    error for a query that failed; returns the number of matches written. Written to a
    temporary file first, so an interrupted run never leaves half a CSV under ``out``."""
    tmp = f"{out}.part"
    matches = 0
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_COLUMNS)
        for res in results:
            if res.error:
                writer.writerow([res.query, "", "", "", res.error])
                continue
            for rank, hit in enumerate(res.hits, 1):
                writer.writerow([res.query, rank, f"{hit.score:.6f}", hit.path, ""])
                matches += 1
    os.replace(tmp, out)
    return matches
