"""The GPU worker's configuration on real processes, on the CPU: chunk and batch sizes per
queue and device (chunks counted in a real Redis), a threads-pool worker with decoding
processes indexing a job, and stuck decoding processes timed out and replaced."""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path

import pytest
import redis

from ris.common.models import get_spec
from ris.common.settings import Settings, get_settings
from ris.producer.client import Producer
from ris.workers.loading import Item
from tests.helpers import start_worker, stop_worker

SPEC = get_spec("efficientnet-lite0")


def test_chunk_and_batch_sizes_follow_the_queue_and_device(
    monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    monkeypatch.setenv("RIS_DEVICE", "cuda")
    cuda = Settings()
    assert (cuda.batch_size, cuda.worker_pool) == (128, "threads")
    assert cuda.decode_processes >= 1
    monkeypatch.setenv("RIS_BATCH_SIZE", "64")
    assert Settings().batch_size == 64  # RIS_BATCH_SIZE means what it says
    monkeypatch.delenv("RIS_DEVICE")
    cpu = Settings()
    assert (cpu.decode_processes, cpu.worker_pool) == (0, "prefork")

    # The producer cuts a job into chunks of the queue's size: count the messages it sends.
    queues = [f"q{uuid.uuid4().hex[:6]}", f"gpu{uuid.uuid4().hex[:6]}"]
    settings = get_settings().model_copy(
        update={"queues": queues, "chunk_size": 2, "gpu_chunk_size": 3}
    )
    producer = Producer(settings)
    r = redis.Redis.from_url(redis_url)
    try:
        for queue, chunks in zip(queues, (4, 3), strict=True):
            producer.ingest([f"/nonexistent/{i}.jpg" for i in range(7)], queue=queue)
            assert r.llen(queue) == chunks
    finally:
        r.delete(*queues)


def test_a_threads_pool_worker_with_decoding_processes_indexes_a_job(
    photos: Path, tmp_root: Path
) -> None:
    """The GPU worker's configuration (threads pool, tasks in flight, decoding processes,
    torch) on the CPU: every image indexed once, and the original is the top match."""
    queue = "bulk"
    env = {
        "RIS_QUEUES": f"cpu,gpu,{queue}",
        "RIS_WORKER_POOL": "threads",
        "RIS_DECODE_PROCESSES": "2",
        "RIS_RUNTIME": "torch",
        "RIS_BATCH_SIZE": "16",
        "RIS_COLLECTION": f"threads_{uuid.uuid4().hex[:6]}",
    }
    proc = start_worker(queue, f"threads-{uuid.uuid4().hex[:4]}@%h", env, tmp_root / "threads.log")
    try:
        settings = get_settings().model_copy(
            update={
                "queues": ["cpu", "gpu", queue],
                "chunk_size": 4,
                "collection": env["RIS_COLLECTION"],
            }
        )
        producer = Producer(settings)
        images = sorted(str(p) for p in photos.iterdir())
        job = producer.ingest(images, queue=queue)
        progress = producer.wait(job, timeout_s=300)
        assert (progress.indexed, progress.failed) == (len(images), 0)
        assert producer.store.count() == len(images)
        hits = producer.collect(producer.submit_query(images[3], top_k=2, queue=queue)).hits
        assert hits[0].path == images[3] and hits[0].score > 0.999
    finally:
        stop_worker(proc)
    assert proc.returncode is not None
    log = (tmp_root / "threads.log").read_text()
    assert "threads pool of 8" in log and "2 decoding process(es)" in log, log[-2000:]
    # The decoding processes died with their worker.
    ps = subprocess.run(["pgrep", "-f", "multiprocessing.spawn"], capture_output=True, text=True)
    assert not [p for p in ps.stdout.split() if _parent_is(int(p), proc.pid)]


def _parent_is(pid: int, parent: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return int(stat.rsplit(")", 1)[1].split()[1]) == parent


def test_stuck_decoding_processes_are_a_timeout_and_replaced(photo_items: list[Item]) -> None:
    """Decoding processes that never answer (SIGSTOPped here; a hung network mount in life)
    fail the call after the task's soft time limit instead of holding a threads-pool task
    forever; they are killed, and the next call gets new ones."""
    import os
    import signal

    from ris.workers import decode_pool

    settings = get_settings().model_copy(update={"task_soft_time_limit_s": 2.0})
    paths = [Item(item.key) for item in photo_items]
    decode_pool.load_in_processes(paths, settings, SPEC.input_size, 2)  # the pool is up
    pool = decode_pool._pool
    assert pool is not None
    stopped = list(pool.executor._processes)
    for pid in stopped:
        os.kill(pid, signal.SIGSTOP)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="decoding processes gave no answer in 2 s"):
        decode_pool.load_in_processes(paths, settings, SPEC.input_size, 2)
    assert time.monotonic() - started < 15
    again = decode_pool.load_in_processes(paths, settings, SPEC.input_size, 2)
    assert [x.error for x in again] == [None] * len(paths)
    assert not set(stopped) & set(decode_pool._pool.executor._processes)  # type: ignore[union-attr]
