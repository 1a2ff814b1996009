"""The GPU worker's inference engine, exercised on the CPU with the same code
(RIS_RUNTIME=torch), without any service: one thread runs the model whatever runs around it,
batches fill across tasks, a stuck model call is a timeout, files are loaded and decoded in
processes, uint8 input."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from ris.common.images import decode, normalise
from ris.common.models import get_spec
from ris.common.settings import Settings, get_settings
from ris.workers.embedder import Embedder
from ris.workers.inference import InferenceEngine
from ris.workers.loading import Item
from ris.workers.networks import load_network
from ris.workers.pipeline import EmbeddingPipeline

SPEC = get_spec("efficientnet-lite0")


def _torch_cpu(**update: object) -> Settings:
    return get_settings().model_copy(update={"runtime": "torch", "device": "cpu", **update})


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# Each test that takes ``device`` runs on the CPU everywhere and on CUDA where there is one.
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not _has_cuda(), reason="no CUDA device")),
]


@pytest.mark.parametrize("device", DEVICES)
def test_uint8_input_matches_the_float_path_within_1e_3_cosine(
    photo_items: list[Item], device: str
) -> None:
    """Images travel as uint8 and are normalised where the model runs (on the GPU there):
    the vectors equal those of the float32 input the model was always given."""
    import torch

    images = np.stack(
        [decode(item.data, SPEC.input_size, 10**8).pixels for item in photo_items[:8]]
    )
    model = load_network(SPEC).eval()
    with torch.inference_mode():
        reference = model(torch.from_numpy(normalise(images, SPEC.mean, SPEC.std))).numpy()
    reference /= np.linalg.norm(reference, axis=1, keepdims=True)
    runtimes = [("torch", False), ("onnx", False)] if device == "cpu" else [("torch", True)]
    for runtime, fp16 in runtimes:
        vectors = Embedder(_torch_cpu(runtime=runtime, device=device, fp16=fp16)).embed(images)
        assert np.min(np.sum(vectors * reference, axis=1)) > 1 - 1e-3, runtime


@pytest.mark.parametrize("device", DEVICES)
def test_the_model_runs_on_one_thread_whatever_calls_it(
    photo_items: list[Item], device: str
) -> None:
    """Four decoding threads, two decoding processes and three concurrent chunks: every model
    call still runs on the engine's one thread (torch on CUDA pays cuDNN's set-up on each new
    thread: 53 instead of 7,936 images/s)."""
    settings = _torch_cpu(decode_threads=4, decode_processes=2, batch_size=4, device=device)
    pipeline = EmbeddingPipeline(settings)
    outcomes: list[list[str | None]] = []

    def chunk(part: list[Item]) -> None:
        outcomes.append([r.error for r in pipeline(part)])

    threads = [threading.Thread(target=chunk, args=(photo_items[i::3],)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(len(o) for o in outcomes) == sorted(len(photo_items[i::3]) for i in range(3))
    assert all(error is None for o in outcomes for error in o)
    engine = pipeline.engine
    assert engine.embedder.call_threads == {engine._thread.ident}
    assert engine._thread.ident != threading.get_ident()


def test_the_engine_runs_a_full_batch_before_it_takes_work() -> None:
    """The model's first full batch runs when the engine starts, on the engine's thread: on an
    H200 the first chunks of a GPU worker otherwise took 2-3 s longer (allocations, kernels
    loaded on first use, the pinned buffer)."""
    engine = InferenceEngine(_torch_cpu(batch_size=8))
    try:
        assert engine.embedder.call_threads == {engine._thread.ident}
        assert engine.batches == 0  # no request was answered yet
    finally:
        engine.close()


def test_a_stuck_model_call_is_a_timeout_not_a_hang() -> None:
    """A model call that never returns (a wedged device) fails its caller after the task's
    soft time limit, which Celery's threads pool (a GPU worker's) does not enforce."""
    engine = InferenceEngine(_torch_cpu(batch_size=2, task_soft_time_limit_s=1.0))
    release = threading.Event()
    model_call = engine.embedder.embed

    def stuck(images: np.ndarray) -> np.ndarray:
        release.wait(60)
        return model_call(images)

    engine.embedder.embed = stuck  # type: ignore[method-assign]
    try:
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="model gave no answer in 1 s"):
            engine.embed(np.zeros((1, SPEC.input_size, SPEC.input_size, 3), np.uint8))
        assert time.monotonic() - started < 10
    finally:
        release.set()
        engine.close()


def test_a_file_is_stat_ed_where_it_is_loaded_and_not_read_when_its_stat_matches(
    tmp_path: Path, photos: Path
) -> None:
    """Stat, read and hash happen in the loader (a decoding process on a GPU worker), not on
    the worker's thread: a file whose stat matches the stored one is not read; a changed stat
    reads it, and the stat taken before reading comes back for the row."""
    from ris.workers.loading import file_stat, load

    path = tmp_path / "photo.jpg"
    path.write_bytes(next(iter(sorted(photos.iterdir()))).read_bytes())
    settings, size = get_settings(), SPEC.input_size
    stat = file_stat(str(path), settings)
    assert stat is not None
    same = load(Item(str(path), known_sha="f" * 64, known_stat=stat), settings, size)
    assert (same.unchanged, same.sha256, same.stat, same.pixels) == (True, "", stat, None)
    moved = (stat[0], stat[1] - 1)
    read = load(Item(str(path), known_stat=moved), settings, size)
    assert not read.unchanged and read.stat == stat and read.pixels is not None
    assert len(read.sha256) == 64
    # Same content under a new stat: unchanged by its hash, with the stat to remember.
    again = load(Item(str(path), known_sha=read.sha256, known_stat=moved), settings, size)
    assert (again.unchanged, again.sha256, again.stat) == (True, read.sha256, stat)


def test_batches_fill_across_concurrent_requests() -> None:
    """Two tasks' windows of 4 images each become one model call of RIS_BATCH_SIZE=8."""
    engine = InferenceEngine(_torch_cpu(batch_size=8, batch_wait_ms=500))
    try:
        blank = np.zeros((4, SPEC.input_size, SPEC.input_size, 3), np.uint8)
        engine.embed(blank[:1])  # warm up: one call
        before = engine.batches
        barrier = threading.Barrier(2)

        def request() -> None:
            barrier.wait()
            assert engine.embed(blank).shape == (4, SPEC.dim)

        threads = [threading.Thread(target=request) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert engine.batches - before == 1
        # A request larger than a batch is split into batches of RIS_BATCH_SIZE.
        assert engine.embed(np.zeros((20, *blank.shape[1:]), np.uint8)).shape == (20, SPEC.dim)
    finally:
        engine.close()


def test_decoding_processes_load_like_the_worker_and_survive_a_killed_process(
    photo_items: list[Item],
) -> None:
    """Files read, hashed and decoded in the decoding processes (pixels back through shared
    memory) equal those loaded in this thread; a decoding process SIGKILLed between calls is
    replaced and no file is lost."""
    import os
    import signal

    from ris.workers import decode_pool
    from ris.workers.loading import load

    settings = get_settings()
    paths = [Item(item.key) for item in photo_items]
    here = [load(item, settings, SPEC.input_size) for item in paths]
    there = decode_pool.load_in_processes(paths, settings, SPEC.input_size, 2)
    for a, b in zip(here, there, strict=True):
        assert (a.key, a.sha256, a.width, a.height, a.error) == (
            b.key,
            b.sha256,
            b.width,
            b.height,
            b.error,
        )
        assert a.pixels is not None and b.pixels is not None and np.array_equal(a.pixels, b.pixels)
    pool = decode_pool._pool
    assert pool is not None and pool.slots is not None  # the shared-memory path was taken
    victim = next(iter(pool.executor._processes))
    os.kill(victim, signal.SIGKILL)
    again = decode_pool.load_in_processes(paths, settings, SPEC.input_size, 2)
    assert [x.error for x in again] == [None] * len(paths)
    assert [x.sha256 for x in again] == [x.sha256 for x in here]
