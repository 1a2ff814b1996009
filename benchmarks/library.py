"""Library benchmark: ``ris sync`` over unchanged files, and filtered vs unfiltered search.

    python benchmarks/library.py [--n 100000] [--queries 200]

Makes ``n`` small files in 100 folders and stores one row per file (with its real size and
mtime, and a random unit vector) in a fresh collection of a private Milvus Lite file, as an
ingest would have. Then:

- ``ris sync ROOT`` end to end (a subprocess: interpreter start, Milvus connection, the walk
  with a stat per file, the scan of the stored rows); every file is unchanged, so nothing is
  read, hashed or sent to a worker;
- the store's search, ``top_k`` 10, on the configured index (IVF_FLAT by default), without a
  filter and with each filter: ``--under`` one folder (1% of rows), ``--under`` at 50%,
  ``--min-width`` (50%), an ingested-after date (50%), all at once. The baseline is the same
  search without a filter, in the same run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import machine

if TYPE_CHECKING:
    from ris.common.store import ImageStore

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = 100


def make_files(root: Path, n: int) -> list[tuple[str, int, int]]:
    """``n`` tiny files in ``FOLDERS`` folders; their (path, size, mtime_ns)."""
    out = []
    for i in range(n):
        folder = root / f"f{i % FOLDERS:03d}"
        if i < FOLDERS:
            folder.mkdir(parents=True)
        path = folder / f"img{i:07d}.jpg"
        path.write_bytes(b"x" * (i % 7 + 1))
        st = path.stat()
        out.append((str(path), st.st_size, st.st_mtime_ns))
    return out


def fill(store: ImageStore, files: list[tuple[str, int, int]], dim: int) -> None:
    """One row per file, as an ingest would store it (random vectors, random sizes/times)."""
    from ris.common.contracts import ImageRow
    from ris.common.store import path_id

    rng = np.random.default_rng(0)
    for start in range(0, len(files), 2000):
        part = files[start : start + 2000]
        vecs = rng.standard_normal((len(part), dim)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        store.upsert(
            [
                ImageRow(
                    id=path_id(p),
                    vector=v,
                    path=p,
                    sha256="0" * 64,
                    width=100 + (start + j) % 1000,  # half the rows are >= 600 wide
                    height=100,
                    ingested_at=1_000 * (start + j),  # half the rows after len(files) / 2
                    size=size,
                    mtime_ns=mtime,
                )
                for j, ((p, size, mtime), v) in enumerate(zip(part, vecs, strict=True))
            ]
        )
    store.flush()


def time_search(store: object, queries: np.ndarray, expr: str) -> tuple[float, float, int]:
    """p50, p95 ms of one search per query, and the mean hits returned."""
    times, hits = [], 0
    for q in queries:
        t = time.perf_counter()
        found = store.search(q, 10, expr)[0]  # type: ignore[attr-defined]
        times.append((time.perf_counter() - t) * 1000)
        hits += len(found)
    return float(np.percentile(times, 50)), float(np.percentile(times, 95)), hits // len(queries)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ris-bench-library-"))
    from ris.common.filters import SearchFilter
    from ris.common.settings import Settings
    from ris.common.store import open_store
    from ris.common.store.lite_server import stop_lite_server

    settings = Settings(
        milvus_uri=str(work / "milvus.db"),
        lite_registry_dir=work / "lite",
        collection="library_bench",
    )
    print(f"machine: {machine()}; {args.n} files, index {settings.index_type}")
    try:
        t = time.perf_counter()
        files = make_files(work / "lib", args.n)
        print(f"made {args.n} files in {time.perf_counter() - t:.1f} s")
        store = open_store(settings)
        t = time.perf_counter()
        fill(store, files, store.dim)
        print(f"stored {store.count()} rows in {time.perf_counter() - t:.1f} s")

        for run in (1, 2):
            t = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-m", "ris.producer.cli", "sync", str(work / "lib")],
                cwd=ROOT,
                env={**os.environ, **settings.to_env()},
                capture_output=True,
                text=True,
                check=True,
            )
            took = time.perf_counter() - t
            print(f"ris sync (run {run}): {took:.1f} s: {proc.stdout.splitlines()[0]}")

        rng = np.random.default_rng(1)
        queries = rng.standard_normal((args.queries, store.dim)).astype(np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        lib = str(work / "lib")
        cases = {
            "none": SearchFilter(),
            "under 1 folder (1%)": SearchFilter(under=f"{lib}/f042"),
            "under all (100%)": SearchFilter(under=lib),
            "min_width 600 (50%)": SearchFilter(min_width=600),
            "ingested_after (50%)": SearchFilter(ingested_after_ms=1_000 * (args.n // 2)),
            "all four (~0.25%)": SearchFilter(
                under=f"{lib}/f042", min_width=600, ingested_after_ms=1_000 * (args.n // 2)
            ),
        }
        time_search(store, queries[:20], "")  # warm up
        base = None
        print(f"{'filter':<24} {'p50 ms':>8} {'p95 ms':>8} {'hits':>5} {'p50 / none':>10}")
        for name, flt in cases.items():
            p50, p95, hits = time_search(store, queries, flt.expression())
            base = base or p50
            print(f"{name:<24} {p50:>8.2f} {p95:>8.2f} {hits:>5} {p50 / base:>10.2f}")
        store.close()
    finally:
        stop_lite_server(work / "milvus.db")
    return 0


if __name__ == "__main__":
    sys.exit(main())
