"""Ingestion benchmark: the product (``ris ingest`` through Redis, Celery workers and Milvus)
against the model's own ceiling and the one-at-a-time baseline, all measured in this run.

    python benchmarks/ingest.py [--images 2000] [--baseline-images 300] [--memory-images 10000]

Figure 1, ceiling: decode + preprocess + forward in one process, best batch size, no queue,
no database. Figure 2, baseline: one image at a time through the pipeline, one Milvus insert
per image (what the original tutorial does). Figure 3, product: wall time from enqueue to the
last row being searchable, with 1 and 2 worker processes. Peak RSS per worker process, and its
growth across a long run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import LocalCluster, benchmark_images, machine, rss_mib

if TYPE_CHECKING:
    from ris.common.settings import Settings


def model_ceiling(
    settings: Settings, paths: list[Path], batch_sizes: tuple[int, ...]
) -> tuple[float, int]:
    """Figure 1: images/s of read + decode + preprocess + forward, sequentially, per batch size;
    returns the best and its batch size."""
    from ris.common.images import decode
    from ris.common.models import get_spec
    from ris.workers.embedder import Embedder

    spec = get_spec(settings.model)
    embedder = Embedder(settings)
    embedder.embed(np.zeros((2, spec.input_size, spec.input_size, 3), np.uint8))  # warm up
    best = (0.0, 0)
    for bs in batch_sizes:
        started = time.perf_counter()
        for i in range(0, len(paths), bs):
            batch = [
                decode(p.read_bytes(), spec.input_size, 10**8).pixels for p in paths[i : i + bs]
            ]
            embedder.embed(np.stack(batch))
        rate = len(paths) / (time.perf_counter() - started)
        print(f"  fig1 batch {bs:>3}: {rate:7.1f} images/s")
        best = max(best, (rate, bs))
    return best


def tutorial_baseline(settings: Settings, paths: list[Path], runtime: str) -> float:
    """Figure 2: one image at a time through the pipeline, one Milvus insert per image, the
    model run by ``runtime`` (the tutorial runs torch eager)."""
    from ris.common.contracts import ImageRow
    from ris.common.store import open_store, path_id
    from ris.workers.loading import Item
    from ris.workers.pipeline import EmbeddingPipeline

    settings = settings.model_copy(update={"runtime": runtime, "batch_size": 1})
    pipeline = EmbeddingPipeline(settings)
    store = open_store(settings)
    pipeline([Item(str(paths[0]), paths[0].read_bytes())])  # warm up
    started = time.perf_counter()
    for p in paths:
        res = pipeline([Item(str(p), p.read_bytes())])[0]
        store.upsert(
            [
                ImageRow(
                    id=path_id(str(p)),
                    vector=res.vector,
                    path=str(p),
                    sha256="",
                    width=res.width,
                    height=res.height,
                    ingested_at=int(time.time() * 1000),
                )
            ]
        )
    return len(paths) / (time.perf_counter() - started)


def milvus_upsert_rate(settings: Settings, chunk: int, rows: int = 4096) -> float:
    """Rows/s one Milvus server takes in chunk-sized upserts: the shared write path."""
    from ris.common.contracts import ImageRow
    from ris.common.store import open_store

    store = open_store(settings.model_copy(update={"collection": "bench_upsert"}))
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((rows, store.dim)).astype(np.float32)
    started = time.perf_counter()
    for start in range(0, rows, chunk):
        store.upsert(
            [
                ImageRow(
                    id=i, vector=vecs[i], path=f"p{i}", sha256="", width=1, height=1, ingested_at=0
                )
                for i in range(start, min(rows, start + chunk))
            ]
        )
    rate = rows / (time.perf_counter() - started)
    store.drop()
    return rate


def product_run(
    cluster: LocalCluster,
    paths: list[Path],
    processes: int,
    worker: dict[str, Any],
    watch_memory: bool = False,
    queue: str = "cpu",
) -> dict[str, float]:
    """Figure 3: ``ris ingest`` through the real queue and workers (``worker``: their
    settings), enqueue to searchable."""
    from ris.producer.client import Producer

    settings = cluster.new_collection()
    cluster.start_workers(processes, queue=queue, **worker)
    producer = Producer(settings)
    producer.store_for(None, create=True).count()  # the collection exists before the clock starts
    samples: list[tuple[int, float]] = []
    stop = threading.Event()

    def sample_memory(job: list[str]) -> None:
        while not stop.wait(1.0):
            if job:
                done = producer.progress(job[0]).processed
                with contextlib.suppress(OSError):
                    samples.append((done, max(rss_mib(p)[0] for p in cluster.worker_pids())))

    job_box: list[str] = []
    sampler = threading.Thread(target=sample_memory, args=(job_box,), daemon=True)
    if watch_memory:
        sampler.start()
    started = time.perf_counter()
    job_box.append(producer.ingest((str(p) for p in paths), queue=queue))
    progress = producer.wait(job_box[0], poll_s=0.1)
    producer.store.flush()
    rows = producer.store.count()
    elapsed = time.perf_counter() - started
    stop.set()
    if watch_memory:
        sampler.join()
    peak = max(rss_mib(p)[1] for p in cluster.worker_pids())
    cluster.stop_workers()
    assert progress.failed == 0 and rows == len(paths), (progress, rows)
    out = {"rate": len(paths) / elapsed, "seconds": elapsed, "peak_rss": peak}
    if len(samples) >= 5:
        # Growth of the resident set from the first fifth of the run to its end.
        fifth = [s for s in samples if s[0] >= len(paths) // 5]
        out["rss_start"], out["rss_end"] = fifth[0][1], samples[-1][1]
    return out


def metrics_cost(cluster: LocalCluster, paths: list[Path], queue: str) -> None:
    """Fig. 3 with one worker process, its /metrics off (RIS_METRICS_PORT=0) and on,
    alternated twice; then the time of one scrape of the worker's /metrics after it indexed
    256 images (median of 50)."""
    import socket
    import statistics
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rates: dict[str, list[float]] = {"off": [], "on": []}
    for label, metrics_port in (("off", 0), ("on", port), ("on", port), ("off", 0)):
        run = product_run(cluster, paths, 1, {"metrics_port": metrics_port}, queue=queue)
        rates[label].append(run["rate"])
        print(f"  fig3, 1 process, metrics {label}: {run['rate']:7.1f} images/s", flush=True)
    from ris.producer.client import Producer

    producer = Producer(cluster.new_collection())
    cluster.start_workers(1, queue=queue, metrics_port=port)
    producer.store_for(None, create=True)
    producer.wait(producer.ingest((str(p) for p in paths[:256]), queue=queue))
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as resp:
        size = len(resp.read())
    times = []
    for _ in range(50):
        started = time.perf_counter()
        with urllib.request.urlopen(url, timeout=10) as resp:
            resp.read()
        times.append((time.perf_counter() - started) * 1000)
    cluster.stop_workers()
    per_chunk = _metrics_cost_per_chunk()
    on, off = statistics.mean(rates["on"]), statistics.mean(rates["off"])
    print(
        f"metrics on / off: {on:.1f} / {off:.1f} images/s = {on / off:.3f} (runs: on "
        f"{rates['on']}, off {rates['off']}); a scrape of the worker's /metrics ({size} bytes, "
        f"after 256 images): median {statistics.median(times):.2f} ms, max {max(times):.2f} ms; "
        f"a 64-image chunk's metric updates in a prefork child: {per_chunk * 1e6:.0f} us"
    )


# What a worker's child does for one 64-image chunk: the counters, three stage timings, and
# 16 model batches of 4 (prefork children write to memory-mapped files).
_CHUNK_UPDATES = """
import os, sys, tempfile, time
os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp()
from ris.common import metrics
def chunk():
    metrics.count_outcomes(62, 1, ["not an image (unrecognised format)"])
    metrics.CHUNKS.labels("done").inc()
    for stage in ("lookup", "read_decode_embed", "milvus_write"):
        metrics.STAGE_SECONDS.labels(stage).observe(0.1)
    for _ in range(16):
        metrics.MODEL_BATCH_SIZE.observe(4)
chunk()
n = 2000
started = time.perf_counter()
for _ in range(n):
    chunk()
print((time.perf_counter() - started) / n)
"""


def _metrics_cost_per_chunk() -> float:
    """Seconds of one chunk's metric updates, in a process writing as a prefork child does."""
    import subprocess

    out = subprocess.run(
        [sys.executable, "-c", _CHUNK_UPDATES], capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip().splitlines()[-1])


def model_figures(
    cluster: LocalCluster,
    model: str,
    paths: list[Path],
    args: argparse.Namespace,
    configs: dict[int, dict[str, Any]],
) -> tuple[float, dict[int, dict[str, float]]]:
    """Fig. 1 and fig. 3 (each worker configuration) of ``model``; the cluster's model is
    RIS_MODEL's again afterwards."""
    default = cluster.settings.model
    settings = cluster.new_collection(model=model)
    ceiling, _ = model_ceiling(settings, paths[: args.ceiling_images], (1, 2, 4, 8, 16, 32))
    runs = fig3_runs(cluster, paths[: args.images], configs, args.queue, f"{model}, ")
    cluster.new_collection(model=default)
    return ceiling, runs


def fig3_runs(
    cluster: LocalCluster,
    paths: list[Path],
    configs: dict[int, dict[str, Any]],
    queue: str,
    label: str = "",
) -> dict[int, dict[str, float]]:
    """Fig. 3 of each worker configuration (processes -> their settings)."""
    runs = {}
    for n, extra in configs.items():
        runs[n] = product_run(cluster, paths, n, extra, queue=queue)
        print(f"  fig3, {label}{n} worker process(es): {runs[n]['rate']:7.1f} images/s", flush=True)
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--baseline-images", type=int, default=300)
    parser.add_argument("--ceiling-images", type=int, default=512)
    parser.add_argument("--memory-images", type=int, default=10000, help="0 skips the long run")
    parser.add_argument(
        "--models",
        default="",
        help="more models (comma-separated, e.g. efficientnet-lite0-int8): fig. 1 and fig. 3 of "
        "each in the same run, with fig. 3's ratio to the first (RIS_MODEL's)",
    )
    parser.add_argument(
        "--metrics-cost",
        action="store_true",
        help="also fig. 3 (one worker process) with the worker's /metrics off and on, "
        "alternated twice, and the time of one scrape",
    )
    parser.add_argument(
        "--queue",
        default="cpu",
        help="queue of the fig. 3 workers; for gpu, export RIS_DEVICE=cuda (and RIS_BATCH_SIZE)",
    )
    args = parser.parse_args()

    total = max(args.images, args.memory_images)
    print(f"machine: {machine()}")
    print(f"preparing {total} images ...", flush=True)
    paths = benchmark_images(total)
    with LocalCluster() as cluster:
        settings = cluster.settings
        print(f"model {settings.model} ({settings.runtime}), chunk {settings.chunk_size}")
        fig1, best_bs = model_ceiling(settings, paths[: args.ceiling_images], (1, 2, 4, 8, 16, 32))
        fig2 = tutorial_baseline(settings, paths[: args.baseline_images], "torch")
        print(f"  fig2: {fig2:7.1f} images/s", flush=True)
        fig2b = tutorial_baseline(settings, paths[: args.baseline_images], "onnx")
        print(f"  fig2b: {fig2b:7.1f} images/s", flush=True)
        upsert_rate = milvus_upsert_rate(settings, settings.chunk_size)
        print(f"  milvus upsert: {upsert_rate:7.0f} rows/s", flush=True)
        # One process with every core, or two processes with one inference thread each.
        configs: dict[int, dict[str, Any]] = {
            1: {},
            2: {"inference_threads": 1, "decode_threads": 1},
        }
        fig3 = fig3_runs(cluster, paths[: args.images], configs, args.queue)
        if args.metrics_cost:
            metrics_cost(cluster, paths[: args.images], args.queue)
        menu = {settings.model: (fig1, fig3)}
        for model in filter(None, args.models.split(",")):
            menu[model] = model_figures(cluster, model, paths, args, configs)
        long_run = None
        if args.memory_images:
            long_run = product_run(
                cluster, paths[: args.memory_images], 1, {}, watch_memory=True, queue=args.queue
            )

    best3 = max(fig3.values(), key=lambda r: r["rate"])["rate"]
    print()
    print(f"Ingestion, {args.images} images of 640x480 JPEG, {os.cpu_count()} cores")
    print(f"{'figure':<70}{'images/s':>10}{'ratio':>10}")
    rows = [
        (f"1 ceiling: decode+forward, 1 process, batch {best_bs}", fig1),
        ("2 baseline (tutorial): torch eager, 1 image at a time, 1 insert each", fig2),
        ("2b the same with this project's ONNX model", fig2b),
    ]
    for label, rate in rows:
        print(f"{label:<70}{rate:>10.1f}")
    for n, r in fig3.items():
        label = f"3 ris ingest, {n} worker process(es), enqueue->searchable"
        print(f"{label:<70}{r['rate']:>10.1f}")
    print(f"{'best fig3 / fig1 (target >= 0.85)':<70}{'':>10}{best3 / fig1:>10.2f}")
    print(f"{'best fig3 / fig2 (target >= 4)':<70}{'':>10}{best3 / fig2:>10.2f}")
    print(f"{'best fig3 / fig2b':<70}{'':>10}{best3 / fig2b:>10.2f}")
    for n, r in fig3.items():
        print(f"peak RSS per worker process, {n} process(es): {r['peak_rss']:.0f} MiB")
    machines = upsert_rate / best3
    print(
        f"scaling: one Milvus Lite server takes {upsert_rate:.0f} rows/s in "
        f"{settings.chunk_size}-row upserts, {machines:.0f}x what this machine's workers "
        "produce (Redis's share per chunk: benchmarks/redis_calls.py). "
        f"More machines scale the model linearly up to about {machines:.0f} machines like this "
        "one; then the single Milvus writer is the bottleneck (use Milvus standalone/cluster)."
    )
    if len(menu) > 1:
        base = max(r["rate"] for r in fig3.values())
        print()
        print("| model | fig. 1 ceiling | fig. 3, 1 process | fig. 3, 2 processes | best fig. 3 "
              "x the first |")  # fmt: skip
        print("|---|---|---|---|---|")
        for model, (ceiling, runs) in menu.items():
            best = max(r["rate"] for r in runs.values())
            print(
                f"| {model} | {ceiling:.1f} | {runs[1]['rate']:.1f} | {runs[2]['rate']:.1f} | "
                f"{best / base:.2f} |"
            )
    if long_run:
        growth = long_run.get("rss_end", 0) - long_run.get("rss_start", 0)
        print(
            f"long run: {args.memory_images} images at {long_run['rate']:.1f} images/s, "
            f"peak RSS {long_run['peak_rss']:.0f} MiB, RSS {long_run.get('rss_start', 0):.0f} MiB "
            f"after 20% -> {long_run.get('rss_end', 0):.0f} MiB at the end ({growth:+.0f} MiB)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
