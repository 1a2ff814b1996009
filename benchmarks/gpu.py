"""GPU benchmark: the GPU worker end to end against its ceilings and against CPU workers on
every core of the same machine, all measured in this run.

    python benchmarks/gpu.py [--images 16000] [--budget-s 420] [--out DIR]
    python benchmarks/gpu.py --dry [--images N]  # the same code on the CPU (no GPU needed)

1 model ceiling: the model alone, fp16, tensors already on the GPU, batch 256.
2 Embedder ceiling: uint8 images in host memory -> pinned -> GPU -> unit vectors, one thread.
3 decode ceiling: the worker's decoding processes (one per core), files already in memory.
4 pipeline: EmbeddingPipeline (decoding processes -> the one inference thread), 4 chunks at once.
5 GPU worker end to end: `ris worker --queue gpu` (threads pool), enqueue -> last row searchable.
6 CPU workers end to end: `ris worker --queue cpu --concurrency <cores>` (onnxruntime).
Also: GPU utilisation during 5 (nvidia-smi), and the cosine of GPU vectors to CPU vectors.
A step that would start less than 30 s before --budget-s runs out is reported as skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import LocalCluster, benchmark_images, machine, rss_mib
from ris.workers.loading import Item

RESULTS: dict[str, Any] = {}


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class GpuSampler:
    """GPU utilisation and memory from nvidia-smi every 0.25 s while a run lasts."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        query = ["--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"]
        while not self._stop.wait(0.25):
            try:
                out = subprocess.run(
                    ["nvidia-smi", *query], capture_output=True, text=True, timeout=5
                ).stdout
                util, mem = out.splitlines()[0].split(",")
                self.samples.append((float(util), float(mem)))
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                return

    def __enter__(self) -> GpuSampler:
        if shutil.which("nvidia-smi"):
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(6)

    def summary(self) -> dict[str, float]:
        if not self.samples:
            return {}
        util = [s[0] for s in self.samples]
        return {
            "gpu_util_mean": round(sum(util) / len(util), 1),
            "gpu_util_max": max(util),
            "gpu_mem_max_mib": max(s[1] for s in self.samples),
        }


def timed(n: int, fn: Callable[[], object], min_s: float = 1.0) -> float:
    """Items/s of ``fn`` (which handles ``n`` items), repeated for at least ``min_s``."""
    fn()  # warm up
    runs, started = 0, time.perf_counter()
    while runs == 0 or time.perf_counter() - started < min_s:
        fn()
        runs += 1
    return n * runs / (time.perf_counter() - started)


def model_ceilings(device: str, batch: int) -> None:
    """Figures 1 and 2."""
    import torch

    from ris.common.settings import get_settings
    from ris.workers.embedder import Embedder
    from ris.workers.networks import load_network

    settings = get_settings().model_copy(
        update={"runtime": "torch", "device": device, "fp16": device == "cuda"}
    )
    embedder = Embedder(settings)
    size = embedder.spec.input_size
    model = load_network(embedder.spec).to(device)
    dtype = torch.float16 if device == "cuda" else torch.float32
    model = model.to(dtype=dtype)
    if device == "cuda":
        model = model.to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, size, size, device=device, dtype=dtype)
    if device == "cuda":
        x = x.to(memory_format=torch.channels_last)

    def resident() -> None:
        with torch.inference_mode():
            model(x)
        if device == "cuda":
            torch.cuda.synchronize()

    RESULTS["model_resident"] = timed(batch, resident)
    say(f"1 model alone, batch {batch}, resident: {RESULTS['model_resident']:.0f} images/s")
    images = np.random.default_rng(0).integers(0, 255, (batch, size, size, 3), dtype=np.uint8)
    RESULTS["embedder"] = timed(batch, lambda: embedder.embed(images))
    say(f"2 Embedder.embed uint8 -> vectors, batch {batch}: {RESULTS['embedder']:.0f} images/s")


def decode_ceiling(paths: list[Path], processes: int) -> None:
    """Figure 3: every decoding process busy reading, hashing and decoding files."""
    from concurrent.futures import ThreadPoolExecutor

    from ris.common.settings import get_settings
    from ris.workers.decode_pool import load_in_processes

    settings = get_settings()
    items = [Item(str(p)) for p in paths]
    groups = [items[i : i + 8] for i in range(0, len(items), 8)]

    def run() -> None:
        with ThreadPoolExecutor(2 * processes) as pool:
            list(pool.map(lambda g: load_in_processes(g, settings, 224, processes), groups))

    RESULTS["decode"] = timed(len(paths), run, min_s=0.5)
    say(f"3 decode, {processes} processes: {RESULTS['decode']:.0f} images/s")


def pipeline_alone(paths: list[Path], device: str, chunk: int, processes: int) -> None:
    """Figure 4: the worker's pipeline as a GPU worker runs it (files read, hashed and decoded
    in processes; 4 chunks in flight), without queue or database."""
    from concurrent.futures import ThreadPoolExecutor

    from ris.common.settings import Settings
    from ris.workers.pipeline import EmbeddingPipeline

    # Settings(device=...) takes the device's defaults (batch, decoding processes).
    settings = Settings(runtime="torch", device=device, fp16=True, decode_processes=processes)
    pipeline = EmbeddingPipeline(settings)
    items = [Item(str(p)) for p in paths]
    chunks = [items[i : i + chunk] for i in range(0, len(items), chunk)]

    def run() -> None:
        with ThreadPoolExecutor(4) as pool:
            for results in pool.map(pipeline, chunks):
                assert all(r.error is None for r in results)

    RESULTS["pipeline"] = timed(len(paths), run, min_s=0.5)
    say(f"4 pipeline, chunks of {chunk}, 4 in flight: {RESULTS['pipeline']:.0f} images/s")


_PRODUCER_KEYS = ("queues", "chunk_size", "gpu_chunk_size")


def end_to_end(
    cluster: LocalCluster,
    name: str,
    paths: list[Path],
    queue: str,
    worker: dict[str, Any],
    concurrency: int | None = None,
    log: Path | None = None,
    profile: Path | None = None,
) -> None:
    """Figures 5 and 6: ``ris ingest`` through Redis, real workers (``worker``: their
    settings) and Milvus Lite. ``profile``: py-spy samples of the worker process while the job
    runs, where py-spy is at hand."""
    from ris.common.settings import Settings
    from ris.producer.client import Producer

    # The producer's settings, this step's or the defaults: the queues it may use, the paths
    # it puts in a task.
    fields = Settings.model_fields
    settings = cluster.new_collection(
        **{
            k: worker[k] if k in worker else fields[k].get_default(call_default_factory=True)
            for k in _PRODUCER_KEYS
        }
    )
    t0 = time.perf_counter()
    if log:
        with open(log, "a") as fh:
            fh.write(f"===== {name}\n")
    cluster.start_workers(1, concurrency, queue=queue, log=log, **worker)
    startup = time.perf_counter() - t0
    producer = Producer(settings)
    producer.store_for(None, create=True)  # the collection exists before the clock starts
    with profiled(cluster.workers[0].pid, profile), GpuSampler() as sampler:
        started = time.perf_counter()
        job = producer.ingest((str(p) for p in paths), queue=queue)
        enqueued = time.perf_counter() - started
        progress = producer.wait(job, poll_s=0.05, timeout_s=600)
        processed = time.perf_counter() - started
        producer.store.flush()
        rows = producer.store.count()
        elapsed = time.perf_counter() - started
    peak = max((rss_mib(p)[1] for p in cluster.worker_pids()), default=0.0)
    cluster.stop_workers()
    RESULTS[name] = {
        "rate": len(paths) / elapsed,
        "seconds": round(elapsed, 2),
        "enqueued_s": round(enqueued, 2),
        "processed_s": round(processed, 2),
        "rows": rows,
        "failed": progress.failed,
        "worker_start_s": round(startup, 1),
        "peak_rss_mib": round(peak),
        "chunk": settings.chunk_size_for(queue),
        **sampler.summary(),
        **(chunk_stages(log, name) if log else {}),
    }
    say(f"{name}: {RESULTS[name]}")
    assert rows == len(paths) and progress.failed == 0, RESULTS[name]


_CHUNK_LINE = re.compile(r"^(\S+ \S+) INFO .*: chunk of (\d+): .* in ([\d.]+)s \((.*)\)$")


def chunk_stages(log: Path, name: str) -> dict[str, Any]:
    """What the worker's log says of step ``name``'s chunks: median seconds per stage, and the
    stage seconds summed over all chunks per second of the step (how many chunks were in
    that stage at once, on average)."""
    section, lines = None, []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("===== "):
            section = line[6:]
        elif section == name and (m := _CHUNK_LINE.match(line)):
            lines.append(m)
    if not lines:
        return {}
    stages: dict[str, list[float]] = {"total": []}
    for m in lines:
        stages["total"].append(float(m[3]))
        for part in re.finditer(r"([\w+]+) ([\d.]+)s", m[4]):
            stages.setdefault(part[1], []).append(float(part[2]))
    stamps = [time.mktime(time.strptime(m[1].split(",")[0], "%Y-%m-%d %H:%M:%S")) for m in lines]
    span = max(1.0, max(stamps) - min(stamps) + float(lines[0][3]))
    return {
        "chunks": len(lines),
        "chunk_median_s": {k: round(float(np.median(v)), 3) for k, v in stages.items()},
        "chunk_stage_in_flight": {k: round(sum(v) / span, 2) for k, v in stages.items()},
    }


def _py_spy() -> str | None:
    """py-spy on PATH, beside this Python, or in a --target install on sys.path (the kit's)."""
    beside = [Path(sys.executable).parent] + [Path(p) / "bin" for p in sys.path if p]
    return shutil.which("py-spy") or next(
        (str(d / "py-spy") for d in beside if (d / "py-spy").is_file()), None
    )


_SPY_RATE = 100


@contextlib.contextmanager
def profiled(pid: int, out: Path | None) -> Iterator[None]:
    """py-spy sampling ``pid`` into ``out`` while the block runs (no profile without ``out``
    or without py-spy); the seconds sampled go to RESULTS["profile_s"]."""
    exe = _py_spy() if out else None
    if exe is None:
        if out:
            say("py-spy not found: no profile")
        yield
        return
    # --gil: only the thread holding the GIL is sampled, so samples / (rate x seconds) is the
    # share of the time the worker's one GIL was busy.
    cmd = [exe, "record", "-p", str(pid), "-r", str(_SPY_RATE), "--gil", "-f", "raw"]
    spy = subprocess.Popen(
        [*cmd, "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    time.sleep(1.0)  # attached before the clock starts
    started = time.perf_counter()
    try:
        yield
    finally:
        RESULTS["profile_s"] = time.perf_counter() - started
        spy.send_signal(signal.SIGINT)  # py-spy writes its samples on Ctrl-C
        try:
            _, err = spy.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            spy.kill()
            _, err = spy.communicate()
        if spy.returncode not in (0, -signal.SIGINT):
            say(f"py-spy: {err.decode(errors='replace')[-300:]}")


def profile_summary(raw: Path, top: int = 60) -> list[str]:
    """The functions the profiled worker spent most samples in, counted once per stack."""
    if not raw.is_file():
        return []
    total, inclusive = 0, Counter[str]()
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        total += int(count)
        # "fn (path/file.py:line)" -> "fn (file.py)": one entry per function
        names = {re.sub(r" \((?:.*/)?([^/:]*)(?::\d+)?\)$", r" (\1)", f) for f in stack.split(";")}
        for frame in names:
            inclusive[frame] += int(count)
    busy = total / (_SPY_RATE * RESULTS.get("profile_s", 1.0))
    head = f"GIL held {busy:.0%} of {RESULTS.get('profile_s', 0):.1f} s ({total} samples)"
    return [head, *(f"{n / max(total, 1):6.1%} {f[:140]}" for f, n in inclusive.most_common(top))]


def gpu_jpeg_probe(paths: list[Path], batch: int = 256) -> None:
    """How fast the GPU decodes and resizes JPEGs (nvJPEG through torchvision), and how close
    its images' vectors are to the CPU decode's: what GPU decoding would bring."""
    import torch
    import torchvision
    from torchvision.io import decode_jpeg

    from ris.common.images import decode
    from ris.common.settings import get_settings
    from ris.workers.embedder import Embedder

    datas = [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in paths]

    def run(part: list[torch.Tensor]) -> torch.Tensor:
        images = decode_jpeg(part, device="cuda")
        out = torch.stack(
            [
                torch.nn.functional.interpolate(
                    im[None].float(), size=(224, 224), mode="bilinear", antialias=True
                )[0]
                for im in images
            ]
        )
        torch.cuda.synchronize()
        return out

    parts = [datas[i : i + batch] for i in range(0, len(datas), batch)]
    RESULTS["gpu_jpeg_decode"] = timed(len(datas), lambda: [run(p) for p in parts], min_s=1.0)
    say(
        f"GPU JPEG decode + resize (torchvision {torchvision.__version__}): "
        f"{RESULTS['gpu_jpeg_decode']:.0f} images/s"
    )
    settings = get_settings().model_copy(
        update={"runtime": "torch", "device": "cuda", "fp16": True}
    )
    embedder = Embedder(settings)
    gpu_images = run(datas[:64]).round().clamp(0, 255).byte().permute(0, 2, 3, 1).cpu().numpy()
    cpu_images = np.stack([decode(p.read_bytes(), 224, 10**8).pixels for p in paths[:64]])
    cos = np.sum(embedder.embed(gpu_images) * embedder.embed(cpu_images), axis=1)
    RESULTS["gpu_jpeg_cosine"] = {"min": float(cos.min()), "mean": float(cos.mean())}
    say(f"cosine GPU-decoded vs CPU-decoded images: {RESULTS['gpu_jpeg_cosine']}")


def gpu_vs_cpu_cosine(paths: list[Path], device: str) -> None:
    """The GPU path's vectors (torch fp16, uint8 normalised on the device) against the CPU
    worker's (onnxruntime, float32)."""
    from ris.common.images import decode
    from ris.common.settings import get_settings
    from ris.workers.embedder import Embedder

    base = get_settings()
    size = 224
    images = np.stack([decode(p.read_bytes(), size, 10**8).pixels for p in paths[:64]])
    gpu = Embedder(
        base.model_copy(update={"runtime": "torch", "device": device, "fp16": device == "cuda"})
    ).embed(images)
    cpu = Embedder(base.model_copy(update={"runtime": "onnx", "device": "cpu"})).embed(images)
    cos = np.sum(gpu * cpu, axis=1)
    RESULTS["cosine_gpu_cpu"] = {"min": float(cos.min()), "mean": float(cos.mean())}
    say(f"cosine GPU path vs CPU path: {RESULTS['cosine_gpu_cpu']}")


def report(args: argparse.Namespace, cores: int) -> str:
    r = RESULTS
    gpu, cpu = r.get("gpu_worker", {}).get("rate"), r.get("cpu_workers", {}).get("rate")
    rows = [
        ("1 model alone, fp16, batch 256, tensors on the GPU", r.get("model_resident")),
        ("2 Embedder.embed: uint8 host -> pinned -> GPU -> vectors", r.get("embedder")),
        (f"3 decode ceiling, {cores} decoding processes", r.get("decode")),
        ("4 pipeline: decoding processes -> one inference thread", r.get("pipeline")),
        ("5 one GPU worker, ris ingest --queue gpu, enqueue -> searchable", gpu),
        (f"6 CPU workers, --concurrency {cores}, same machine, end to end", cpu),
    ]
    lines = [f"machine: {r.get('machine')}", f"GPU: {r.get('gpu')}", ""]
    lines += ["| figure | images/s |", "|---|---|"]
    lines += [f"| {label} | {f'{rate:,.0f}' if rate else 'skipped'} |" for label, rate in rows]
    lines.append("")
    if gpu and cpu:
        lines.append(f"GPU worker / CPU workers on all cores: {gpu / cpu:.2f}x (target >= 3.5)")
    if gpu and r.get("decode"):
        lines.append(f"GPU worker / decode ceiling: {gpu / r['decode']:.2f}")
    if gpu and r.get("pipeline"):
        lines.append(f"GPU worker / pipeline alone: {gpu / r['pipeline']:.2f}")
    for key, value in r.items():
        if key.startswith(("gpu_worker", "cpu_workers")):
            lines.append(f"{key}: {json.dumps(value)}")
    if "cosine_gpu_cpu" in r:
        lines.append(f"cosine GPU vs CPU vectors: {json.dumps(r['cosine_gpu_cpu'])}")
    if "gpu_jpeg_decode" in r:
        lines.append(f"GPU JPEG decode + resize: {r['gpu_jpeg_decode']:,.0f} images/s")
        lines.append(f"cosine GPU-decoded vs CPU-decoded: {json.dumps(r.get('gpu_jpeg_cosine'))}")
    if profile := profile_summary(args.out / "gpu_worker_profile.txt"):
        lines += ["", "GPU worker process, py-spy --gil, share of samples (inclusive):", *profile]
    for err in r.get("errors", []):
        lines.append(f"error: {err}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, help="default 16000, or 96 with --dry")
    parser.add_argument("--budget-s", type=float, default=420)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "ris_data")))
    parser.add_argument("--dry", action="store_true", help="on the CPU, few images")
    parser.add_argument("--steps", help="comma-separated: only these steps (default: all)")
    args = parser.parse_args()
    deadline = time.monotonic() + args.budget_s
    cores = os.cpu_count() or 1
    device = "cpu" if args.dry else "cuda"
    n = args.images or (96 if args.dry else 16000)
    RESULTS["machine"] = machine()
    if device == "cuda":
        import torch

        RESULTS["gpu"] = f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    say(f"{RESULTS['machine']}; {RESULTS.get('gpu', 'no GPU (dry run)')}; {n} images")
    paths = benchmark_images(n)
    sample = paths[:4096]
    args.out.mkdir(parents=True, exist_ok=True)
    wlog = args.out / "gpu_worker.log"
    say("images ready")
    decoders, chunk = (2, 16) if args.dry else (cores, 256)
    # The GPU queue needs RIS_DEVICE=cuda; a dry run uses a queue of another name.
    gpu_queue = "gpu" if device == "cuda" else "bulk"
    gpu_worker: dict[str, Any] = {"device": device, "runtime": "torch", "fp16": True}
    if args.dry:
        gpu_worker |= {"queues": ["cpu", "gpu", "bulk"], "worker_pool": "threads"}
        gpu_worker |= {"decode_processes": 2, "batch_size": 16}
    cpu_worker = {"device": "cpu", "runtime": "onnx", "inference_threads": 1, "decode_threads": 1}
    with LocalCluster() as cluster:
        steps: list[tuple[str, Callable[[], None]]] = [
            ("ceilings", lambda: model_ceilings(device, 16 if args.dry else 256)),
            ("cosine", lambda: gpu_vs_cpu_cosine(sample, device)),
            ("decode", lambda: decode_ceiling(sample, decoders)),
            (
                "gpu_worker",
                lambda: end_to_end(cluster, "gpu_worker", paths, gpu_queue, gpu_worker, log=wlog),
            ),
            (
                "cpu_workers",
                lambda: end_to_end(cluster, "cpu_workers", paths, "cpu", cpu_worker, cores),
            ),
            (
                "gpu_worker_profiled",
                lambda: end_to_end(
                    cluster,
                    "gpu_worker_profiled",
                    paths,
                    gpu_queue,
                    gpu_worker,
                    log=wlog,
                    profile=args.out / "gpu_worker_profile.txt",
                ),
            ),
            ("gpu_jpeg", lambda: gpu_jpeg_probe(sample[:1024]) if device == "cuda" else None),
            ("pipeline", lambda: pipeline_alone(sample, device, chunk, decoders)),
        ]
        # Other GPU worker settings, while the budget lasts: the default again (the spread),
        # decoding on every core, more chunks in flight, the former defaults.
        for name, extra, conc in (
            ("gpu_worker_repeat", {}, None),
            ("gpu_worker_decoding_on_every_core", {"decode_processes": cores}, None),
            ("gpu_worker_16_in_flight", {}, 16),
            (
                "gpu_worker_batch_256_chunks_of_512",
                {"batch_size": 256, "gpu_chunk_size": 512},
                None,
            ),
        ):
            worker = {**gpu_worker, **extra}
            steps.append(
                (
                    name,
                    lambda n=name, e=worker, c=conc: end_to_end(
                        cluster, n, paths, gpu_queue, e, c, log=wlog
                    ),
                )
            )
        wanted = set(args.steps.split(",")) if args.steps else None
        for name, step in steps:
            if wanted is not None and name not in wanted:
                continue
            if time.monotonic() > deadline - 30:
                RESULTS.setdefault("errors", []).append(f"{name}: skipped, out of budget")
                continue
            try:
                step()
            except Exception as exc:  # report and go on: one run of the machine is all we get
                RESULTS.setdefault("errors", []).append(f"{name}: {type(exc).__name__}: {exc}")
                say(f"{name} failed: {type(exc).__name__}: {exc}")
    text = report(args, cores)
    print("\n" + text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_benchmark.md").write_text(text + "\n")
    (args.out / "gpu_benchmark.json").write_text(json.dumps(RESULTS, indent=2, default=str))
    return 0 if not RESULTS.get("errors") else 1


if __name__ == "__main__":
    sys.exit(main())
