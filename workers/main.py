"""Start a Celery worker on a queue: ``ris worker --queue cpu`` (or ``gpu``)."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile

from ris.common.celery_app import make_app
from ris.common.settings import Settings, is_gpu_queue

log = logging.getLogger(__name__)


def _metrics_folder() -> None:
    """A fresh ``PROMETHEUS_MULTIPROC_DIR`` where this worker's processes write their
    metrics and its main process reads them summed. Set before anything imports
    prometheus_client (``ris.common.metrics``): it picks its storage at import."""
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(prefix="ris-metrics-")
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder


def run_worker(
    settings: Settings,
    queues: list[str],
    concurrency: int | None = None,
    loglevel: str = "INFO",
    hostname: str | None = None,
) -> None:
    """Run a worker with ``settings`` in this process until it is stopped (``concurrency``:
    pool processes, or with the threads pool the tasks in flight; default 1 and 8)."""
    # Chunks in flight keep a GPU's batches full while others are read, looked up and written
    # (H200, 16 cores, benchmarks/gpu.py: 8 in flight 4,261 images/s, 16 in flight 4,344).
    concurrency = concurrency or (8 if settings.worker_pool == "threads" else 1)
    unknown = set(queues) - set(settings.queues)
    if unknown:
        raise SystemExit(
            f"unknown queue(s) {sorted(unknown)}; choose from {settings.queues} (RIS_QUEUES)"
        )
    if any(map(is_gpu_queue, queues)) and settings.device != "cuda":
        # A gpu-queue worker that silently ran on the CPU would hide a misconfiguration.
        raise SystemExit("a gpu-queue worker needs RIS_DEVICE=cuda (and a CUDA device)")
    if settings.metrics_port:
        _metrics_folder()
    from ris.workers import broker_acks
    from ris.workers.duties import duties_step
    from ris.workers.tasks import register_tasks

    broker_acks.install()

    app = make_app(settings)
    runtime = register_tasks(app, settings)
    # Holding its chunks under leases, its turn at recovering lost ones, and /metrics.
    app.steps["worker"].add(duties_step(settings))
    if settings.worker_pool == "threads":
        # One process: the model on its own thread, tasks on --concurrency threads, decoding
        # in processes. Load it now, so that a broken GPU stops the start, not the first task.
        try:
            runtime.context()
        except RuntimeError as exc:
            gpu = "GPU " if settings.device == "cuda" else ""
            raise SystemExit(f"cannot start a {gpu}worker: {exc}") from None
    elif settings.device == "cuda":
        # Prefork: the pool's processes load the model. Check in a spawned process, so this
        # forking parent never touches CUDA.
        from ris.workers.embedder import require_cuda

        try:
            require_cuda(settings)
        except RuntimeError as exc:
            raise SystemExit(f"cannot start a GPU worker: {exc}") from None
    argv = [
        "worker",
        f"--queues={','.join(queues)}",
        f"--concurrency={concurrency}",
        f"--loglevel={loglevel}",
        f"--pool={settings.worker_pool}",
        "--without-mingle",
        "--without-gossip",
    ]
    if hostname:
        argv.append(f"--hostname={hostname}")
    log.info(
        "starting worker on %s: %s pool of %d, batch %d, %d decoding process(es)",
        queues,
        settings.worker_pool,
        concurrency,
        settings.batch_size,
        settings.decode_processes,
    )
    app.worker_main(argv)
