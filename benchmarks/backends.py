"""Milvus server against Milvus Lite at scale, store level (no model, no queue): insert rate,
index build time, search p50/p95, recall@10 against exact search and server memory, for FLAT,
IVF_FLAT and HNSW on the server and IVF_FLAT on Lite, over the same vectors.

Run through ``python benchmarks/query.py --milvus-uri http://HOST:19530 --size 100000``.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import rss_mib
from tests.milvus_server import sealed_segments

BATCH = 1000
# (label, back end, index type); the index parameters are the defaults of common/settings.py.
RUNS = (
    ("server", "FLAT"),
    ("server", "IVF_FLAT"),
    ("server", "HNSW"),
    ("lite", "IVF_FLAT"),
)
# Cheaper search settings measured beside the defaults: latency against recall.
SWEEPS = {"HNSW": ("ef", (32, 64)), "IVF_FLAT": ("nprobe", (8, 16)), "IVF_SQ8": ("nprobe", (8, 16))}


def listener_pid(port: int) -> int | None:
    """The pid of the local process listening on TCP ``port`` (from /proc, no tools)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if int(cols[1].rsplit(":", 1)[1], 16) == port and cols[3] == "0A":  # LISTEN
                inodes.add(f"socket:[{cols[9]}]")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if any(str(fd.readlink()) in inodes for fd in (proc / "fd").iterdir()):
                return int(proc.name)
        except OSError:
            continue
    return None


@dataclass
class Result:
    back_end: str
    index: str
    rows: int
    insert_rows_s: float
    build_s: float
    search_p50: float
    search_p95: float
    strong_p50: float | None
    recall: float
    rss_mib: float | None  # the server process once this collection's index is loaded
    segments: int | None  # sealed segments the server searches (one index each)
    sweep: list[tuple[str, float, float]]  # (search setting, p50 ms, recall) beside defaults


def _wait_indexed(store: Any, rows: int, timeout: float = 3600) -> None:
    """Until the server's query node searches every row through a loaded index: a sealed
    segment is searched brute force until its index is built and loaded, and a segment the
    server compacts is indexed again (Lite indexes at flush and reports no segments). A FLAT
    index is never loaded: the query node searches the raw vectors it has."""
    loads_index = store.settings.index_type != "FLAT"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        desc = store.client.describe_index(store.name, "vector") or {}
        sealed = sealed_segments(store) or []
        if (
            int(desc["indexed_rows"]) >= rows
            and sum(n for n, _ in sealed) >= rows
            and (all(indexed for _, indexed in sealed) or not loads_index)
        ):
            return
        time.sleep(0.5)
    raise TimeoutError(f"index of {store.name} not built in {timeout} s")


def _recall(store: Any, exact: np.ndarray, queries: np.ndarray, top_k: int) -> float:
    """Mean overlap of the store's top k with the exact top k."""
    # A few queries a call: 200 exact (FLAT) searches of a million rows in one call outlast
    # the client's timeout on two cores.
    found = [
        hit for s in range(0, len(queries), 10) for hit in store.search(queries[s : s + 10], top_k)
    ]
    return float(
        np.mean(
            [
                len(set(e.tolist()) & {i for i, _ in f}) / top_k
                for e, f in zip(exact, found, strict=True)
            ]
        )
    )


def _latencies(search: Callable[[np.ndarray], Any], queries: np.ndarray) -> list[float]:
    out = []
    for q in queries:
        started = time.perf_counter()
        search(q)
        out.append((time.perf_counter() - started) * 1000)
    return out


def run_one(
    settings: Any,
    back_end: str,
    vectors: np.ndarray,
    queries: np.ndarray,
    top_k: int,
    pid: int | None,
) -> Result:
    """Fill a fresh collection with ``vectors``, index, search; drop it again."""
    from ris.common.contracts import ImageRow
    from ris.common.store import ImageStore

    store = ImageStore(settings, "synthetic", vectors.shape[1])
    try:
        ids = np.arange(len(vectors))
        started = time.perf_counter()
        for start in range(0, len(vectors), BATCH):
            # The workers' write path for new images (whole rows, inserted: ImageStore.upsert).
            batch = ids[start : start + BATCH]
            store.upsert(
                [
                    ImageRow(
                        id=int(i),
                        vector=vectors[i],
                        path=f"synthetic/{i}",
                        sha256="",
                        width=0,
                        height=0,
                        ingested_at=0,
                    )
                    for i in batch
                ],
                new_ids=set(batch.tolist()),
            )
        insert_s = time.perf_counter() - started
        started = time.perf_counter()
        store.flush()
        if back_end == "server":
            _wait_indexed(store, len(vectors))
        build_s = time.perf_counter() - started
        for q in queries[:20]:  # warm up
            store.search(q, top_k)
        lat = _latencies(lambda q: store.search(q, top_k), queries)
        strong = None
        if back_end == "server":
            strong_store = ImageStore(
                settings.model_copy(update={"search_consistency": "Strong"}),
                "synthetic",
                vectors.shape[1],
            )
            strong = float(
                np.percentile(_latencies(lambda q: strong_store.search(q, top_k), queries[:30]), 50)
            )
            strong_store.close()
        # The exact top k, unordered (recall counts a set): no full sort of a million scores.
        exact = np.argpartition(-(queries @ vectors.T), top_k, axis=1)[:, :top_k]
        sweep = []
        key, values = SWEEPS.get(settings.index_type, ("", ()))
        for value in values:
            cheaper = ImageStore(
                settings.model_copy(update={"search_params": {key: value}}),
                "synthetic",
                vectors.shape[1],
            )
            search = functools.partial(cheaper.search, top_k=top_k)
            p50 = float(np.percentile(_latencies(search, queries), 50))
            sweep.append((f"{key} {value}", p50, _recall(cheaper, exact, queries, top_k)))
            cheaper.close()
        rss = rss_mib(pid)[0] if pid else None
        sealed = sealed_segments(store)
        return Result(
            back_end,
            settings.index_type,
            len(vectors),
            len(vectors) / insert_s,
            build_s,
            float(np.percentile(lat, 50)),
            float(np.percentile(lat, 95)),
            strong,
            _recall(store, exact, queries, top_k),
            rss,
            len(sealed) if sealed is not None else None,
            sweep,
        )
    finally:
        store.drop()
        store.close()


def compare(
    base: Any,
    server_uri: str,
    token: str | None,
    lite_db: Path,
    vectors: np.ndarray,
    queries: np.ndarray,
    top_k: int,
    runs: Sequence[tuple[str, str]] = RUNS,
) -> list[Result]:
    """Every run (back end, index) over the same vectors, one at a time; results as they
    come."""
    from pydantic import SecretStr

    from ris.common.defaults import INDEX_DEFAULTS
    from ris.common.store import milvus_uri

    results = []
    for back_end, index in runs:
        build, search = INDEX_DEFAULTS[index]
        update: dict[str, Any] = {
            "collection": f"scale_{index.lower()}_{uuid.uuid4().hex[:6]}",
            "index_type": index,
            "index_params": build,
            "search_params": search,
        }
        if back_end == "server":
            update |= {
                "milvus_uri": server_uri,
                "milvus_token": SecretStr(token) if token else None,
                # Searches see data up to a few seconds old: the latency of the index, not of
                # the server's time tick (Strong, measured beside it).
                "search_consistency": "Bounded",
            }
        else:
            update |= {"milvus_uri": str(lite_db), "milvus_token": None}
        settings = base.model_copy(update=update)
        uri = milvus_uri(settings)
        pid = listener_pid(int(uri.rsplit(":", 1)[1]))
        result = run_one(settings, back_end, vectors, queries, top_k, pid)
        print(result, flush=True)
        results.append(result)
    return results


def table(results: list[Result], top_k: int) -> str:
    """The README table."""
    lines = [
        f"| back end | index | rows | insert rows/s | index build s | search p50 / p95 ms "
        f"| Strong p50 ms | recall@{top_k} | segments | cheaper search: p50 ms, recall "
        "| server RSS MiB, index loaded |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        strong = f"{r.strong_p50:.1f}" if r.strong_p50 is not None else "-"
        rss = f"{r.rss_mib:,.0f}" if r.rss_mib is not None else "-"
        segments = str(r.segments) if r.segments is not None else "-"
        sweep = "; ".join(f"{label}: {p50:.1f}, {recall:.3f}" for label, p50, recall in r.sweep)
        lines.append(
            f"| {r.back_end} | {r.index} | {r.rows:,} | {r.insert_rows_s:,.0f} | {r.build_s:.1f} "
            f"| {r.search_p50:.1f} / {r.search_p95:.1f} | {strong} | {r.recall:.3f} "
            f"| {segments} | {sweep or '-'} | {rss} |"
        )
    return "\n".join(lines)
