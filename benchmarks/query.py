"""Query benchmark: ``ris search`` latency and throughput through the real task path, and the
recall of the configured index against exact search, at 10k and 100k indexed vectors.

    python benchmarks/query.py [--sizes 10000,100000] [--queries 200] [--index HNSW]
    python benchmarks/query.py --milvus-uri http://HOST:19530 [--milvus-token root:PW] [--size N]

The index holds the embeddings of real photos plus synthetic vectors drawn around them (noisy
copies of real embeddings, so they cluster as real ones do). Queries are altered copies of
indexed photos, sent as ``ris search`` sends them: image bytes in a Celery task, embedded and
searched by a worker, ids resolved to paths against Milvus. The baseline in the same run is
exact (FLAT) search over the same vectors. The same queries are then sent to ``ris serve`` as
``POST /api/search?wait=true`` uploads, to show what the HTTP layer adds.

With ``--milvus-uri`` it compares back ends instead (benchmarks/backends.py): the same
``--size`` vectors in FLAT, IVF_FLAT and HNSW on that Milvus server and IVF_FLAT on Milvus Lite.
``python -m tests.milvus_server DIR`` runs such a server here (the compose file's tuning) and
prints the two options.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import LocalCluster, benchmark_images, machine

if TYPE_CHECKING:
    from ris.common.settings import Settings


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def real_embeddings(settings: Settings, paths: list[Path]) -> np.ndarray:
    from ris.workers.loading import Item
    from ris.workers.pipeline import EmbeddingPipeline

    pipeline = EmbeddingPipeline(settings)
    results = pipeline([Item(str(p), p.read_bytes()) for p in paths])
    return np.stack([r.vector for r in results])


def synthetic(real: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` unit vectors drawn from a Gaussian with the real embeddings' mean and covariance:
    no tight clusters, so a query's neighbours spread over many index cells (the hard case
    for an approximate index)."""
    rng = np.random.default_rng(seed)
    mean = real.mean(axis=0)
    _, sv, vt = np.linalg.svd(real - mean, full_matrices=False)
    scale = sv / np.sqrt(len(real) - 1)
    out = np.empty((n, real.shape[1]), np.float32)
    for start in range(0, n, 100_000):  # in blocks: a million at once would need ~15 GB
        z = rng.standard_normal((min(100_000, n - start), len(sv))).astype(np.float32)
        vecs = mean + (z * scale) @ vt
        out[start : start + len(z)] = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    return out


def fill(store: Any, real_paths: list[Path], real: np.ndarray, extra: np.ndarray) -> None:
    """The real embeddings under their paths, then the synthetic ones, written by the store."""
    from ris.common.contracts import ImageRow

    paths = [str(p) for p in real_paths] + [f"synthetic/{i}" for i in range(len(extra))]
    vectors = np.concatenate([real, extra])
    for start in range(0, len(paths), 1000):
        store.upsert(
            [
                ImageRow(
                    id=i,
                    vector=vectors[i],
                    path=paths[i],
                    sha256="",
                    width=0,
                    height=0,
                    ingested_at=0,
                )
                for i in range(start, min(len(paths), start + 1000))
            ]
        )
    store.flush()


def altered(path: Path) -> bytes:
    """A 70% JPEG re-encoded copy: what a user searches with."""
    with Image.open(path) as img:
        small = img.convert("RGB").resize((img.width * 7 // 10, img.height * 7 // 10))
    buf = io.BytesIO()
    small.save(buf, "JPEG", quality=75)
    return buf.getvalue()


def end_to_end(producer: Any, queries: list[Path], top_k: int) -> dict[str, Any]:
    """One ``ris search`` at a time: submit, wait, resolve; and the worker's own timings."""
    total, search, hits = [], [], 0
    for q in queries:
        started = time.perf_counter()
        res = producer.search([str(q)], top_k)[0]
        total.append((time.perf_counter() - started) * 1000)
        search.append(res.timing_ms["search"])
        hits += bool(res.hits) and res.hits[0].path is not None
    return {"e2e": total, "search": search, "resolved": hits}


@contextmanager
def api_server(settings: Settings) -> Iterator[str]:
    """``ris serve`` with ``settings`` on a free loopback port; yields its URL."""
    import requests

    from tests.helpers import free_port

    port = free_port()
    log = Path("ris_data/bench/api.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ris.producer.cli", "serve", "--port", str(port)],
        env={**os.environ, **settings.to_env(), "RIS_API_HOST": "127.0.0.1"},
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{url}/api/config", timeout=2).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.2)
        else:
            raise RuntimeError(f"ris serve did not answer within 120 s (log: {log})")
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def api_end_to_end(url: str, queries: list[Path], top_k: int, collection: str) -> list[float]:
    """One ``POST /api/search?wait=true`` upload at a time (ms each, file read included, as
    ``ris search`` reads it)."""
    import requests

    session = requests.Session()
    params = {"wait": "true", "top_k": str(top_k), "collection": collection}
    total = []
    for q in queries:
        started = time.perf_counter()
        files = {"file": (q.name, q.read_bytes(), "image/jpeg")}
        response = session.post(f"{url}/api/search", params=params, files=files, timeout=120)
        response.raise_for_status()
        assert response.json()["hits"], response.text
        total.append((time.perf_counter() - started) * 1000)
    return total


def throughput(producer: Any, queries: list[Path], top_k: int) -> float:
    """Queries per second with every query task submitted at once."""
    started = time.perf_counter()
    ids = [producer.submit_query(str(q), top_k) for q in queries]
    for task_id in ids:
        producer.collect(task_id)
    return len(queries) / (time.perf_counter() - started)


def recall_at(store: Any, all_vecs: np.ndarray, queries: np.ndarray, k: int) -> float:
    """Mean overlap of the index's top-k with the exact top-k (numpy, inner product)."""
    exact = np.argsort(-(queries @ all_vecs.T), axis=1)[:, :k]
    found = store.search(queries, k)
    return float(
        np.mean(
            [
                len(set(e.tolist()) & {i for i, _ in f}) / k
                for e, f in zip(exact, found, strict=True)
            ]
        )
    )


def compare_back_ends(args: argparse.Namespace) -> int:
    """``--milvus-uri``: the server's indexes and Lite over the same vectors, store level."""
    import tempfile

    from benchmarks.backends import RUNS, compare, table
    from ris.common.settings import Settings
    from ris.common.store.lite_server import stop_lite_server

    print(f"machine: {machine()}")
    real_paths = benchmark_images(1000)
    query_files = [_query_file(p) for p in real_paths[: args.queries]]
    real = real_embeddings(Settings(), real_paths)
    vectors = np.concatenate([real, synthetic(real, args.size - len(real))])
    queries = real_embeddings(Settings(), query_files)
    lite_db = Path(tempfile.mkdtemp(prefix="ris-bench-")) / "lite.db"
    try:
        results = compare(
            Settings(),
            args.milvus_uri,
            args.milvus_token,
            lite_db,
            vectors,
            queries,
            args.top_k,
            args.runs or RUNS,
        )
    finally:
        stop_lite_server(lite_db)
    print()
    print(f"{args.size:,} x {vectors.shape[1]}-d vectors, {len(queries)} queries, {machine()}")
    print(table(results, args.top_k))
    return 0


def _query_file(path: Path) -> Path:
    """The altered copy of ``path`` that stands for a user's query (made once)."""
    qdir = Path("ris_data/bench/queries")
    qdir.mkdir(parents=True, exist_ok=True)
    target = qdir / path.name
    if not target.exists():
        target.write_bytes(altered(path))
    return target


def _runs(text: str) -> list[tuple[str, str]]:
    """``--runs``: ``back end:index`` pairs, comma-separated."""
    from ris.common.defaults import INDEX_DEFAULTS

    runs = [tuple(run.split(":")) for run in text.split(",")]
    for run in runs:
        if len(run) != 2 or run[0] not in ("server", "lite") or run[1] not in INDEX_DEFAULTS:
            raise argparse.ArgumentTypeError(
                f"{':'.join(run)!r}: want server|lite:{'|'.join(INDEX_DEFAULTS)}"
            )
    return runs  # type: ignore[return-value]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--index", default="IVF_FLAT", help="index under test (baseline: FLAT)")
    parser.add_argument("--index-params", default='{"nlist": 1024}')
    parser.add_argument("--search-params", default='{"nprobe": 32}')
    parser.add_argument("--milvus-uri", help="compare this Milvus server with Milvus Lite")
    parser.add_argument("--milvus-token", help="user:password of that server")
    parser.add_argument("--size", type=int, default=100_000, help="vectors, with --milvus-uri")
    parser.add_argument(
        "--runs",
        type=_runs,
        help="with --milvus-uri: back end:index pairs, e.g. server:HNSW,lite:IVF_FLAT",
    )
    args = parser.parse_args()
    if args.milvus_uri:
        return compare_back_ends(args)
    sizes = [int(s) for s in args.sizes.split(",")]

    print(f"machine: {machine()}")
    real_paths = benchmark_images(1000)
    query_files = [_query_file(p) for p in real_paths[: args.queries]]

    rows_out = []
    with LocalCluster() as cluster, api_server(cluster.settings) as api_url:
        from ris.common.store import open_store
        from ris.producer.client import Producer

        real = real_embeddings(cluster.settings, real_paths)
        query_vecs = real_embeddings(cluster.settings, query_files)
        for size in sizes:
            extra = synthetic(real, size - len(real))
            all_vecs = np.concatenate([real, extra])
            for index, iparams, sparams in (
                ("FLAT", "{}", "{}"),
                (args.index, args.index_params, args.search_params),
            ):
                settings = cluster.new_collection(
                    index_type=index,
                    index_params=json.loads(iparams),
                    search_params=json.loads(sparams),
                )
                store = open_store(settings)
                started = time.perf_counter()
                fill(store, real_paths, real, extra)
                load_s = time.perf_counter() - started
                recall = recall_at(store, all_vecs, query_vecs, args.top_k)
                cluster.start_workers(1)
                producer = Producer(settings)
                producer.search([str(query_files[0])], args.top_k)  # warm up
                e2e = end_to_end(producer, query_files, args.top_k)
                api = api_end_to_end(api_url, query_files, args.top_k, settings.collection)
                qps1 = throughput(producer, query_files, args.top_k)
                cluster.stop_workers()
                cluster.start_workers(2, inference_threads=1)
                qps2 = throughput(producer, query_files, args.top_k)
                cluster.stop_workers()
                row = {
                    "size": size,
                    "index": index,
                    "insert_s": load_s,
                    "search_p50": _pct(e2e["search"], 50),
                    "search_p95": _pct(e2e["search"], 95),
                    "e2e_p50": _pct(e2e["e2e"], 50),
                    "e2e_p95": _pct(e2e["e2e"], 95),
                    "api_p50": _pct(api, 50),
                    "api_p95": _pct(api, 95),
                    "recall": recall,
                    "qps1": qps1,
                    "qps2": qps2,
                }
                rows_out.append(row)
                print(
                    json.dumps(
                        {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}
                    ),
                    flush=True,
                )
                store.drop()

    print()
    print(f"Queries ({args.queries} altered photos, top-{args.top_k}), {machine()}")
    print(f"index under test: {args.index} {args.index_params} search {args.search_params}")
    header = (
        f"{'vectors':>8} {'index':<9} {'search p50/p95 ms':>18} {'e2e p50/p95 ms':>16} "
        f"{'api p50/p95 ms':>16} {'recall@' + str(args.top_k):>10} {'qps 1w':>7} {'qps 2w':>7}"
    )
    print(header)
    for r in rows_out:
        print(
            f"{r['size']:>8} {r['index']:<9} {r['search_p50']:>8.1f} / {r['search_p95']:<7.1f}"
            f"{r['e2e_p50']:>7.1f} / {r['e2e_p95']:<7.1f}"
            f"{r['api_p50']:>7.1f} / {r['api_p95']:<7.1f}{r['recall']:>10.3f}"
            f"{r['qps1']:>8.1f}{r['qps2']:>8.1f}"
        )
    for size in sizes:
        base, test = (
            next(r for r in rows_out if r["size"] == size and r["index"] == ix)
            for ix in ("FLAT", args.index)
        )
        print(
            f"{size}: {args.index} search p50 is {base['search_p50'] / test['search_p50']:.1f}x "
            f"faster than FLAT, recall {test['recall']:.3f}; POST /api/search?wait=true p50 "
            f"{test['api_p50'] - test['e2e_p50']:+.1f} ms vs ris search"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
