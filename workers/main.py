"""Start a Celery worker on a queue: ``ris worker --queue cpu`` (or ``gpu``)."""

from __future__ import annotations

import logging

from common.celery_app import app, is_gpu_queue
from common.settings import get_settings

log = logging.getLogger(__name__)


def run_worker(
    queues: list[str], concurrency: int, loglevel: str = "INFO", hostname: str | None = None
) -> None:
    """Run a worker in this process until it is stopped."""
    settings = get_settings()
    unknown = set(queues) - set(settings.queues)
    if unknown:
        raise SystemExit(
            f"unknown queue(s) {sorted(unknown)}; choose from {settings.queues} (RIS_QUEUES)"
        )
    if any(map(is_gpu_queue, queues)) and settings.device != "cuda":
        # A gpu-queue worker that silently ran on the CPU would hide a misconfiguration.
        raise SystemExit("a gpu-queue worker needs RIS_DEVICE=cuda (and a CUDA device)")
    if settings.device == "cuda":
        from common.models import require_cuda

        try:
            require_cuda(settings)
        except RuntimeError as exc:
            raise SystemExit(f"cannot start a GPU worker: {exc}") from None
    argv = [
        "worker",
        f"--queues={','.join(queues)}",
        f"--concurrency={concurrency}",
        f"--loglevel={loglevel}",
        "--pool=prefork",
        "--without-mingle",
        "--without-gossip",
    ]
    if hostname:
        argv.append(f"--hostname={hostname}")
    log.info("starting worker on %s with %d process(es)", queues, concurrency)
    app.worker_main(argv)
