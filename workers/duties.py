"""What a worker does for the cluster beside running tasks, in its main process: holding the
chunks it took under leases (:mod:`ris.workers.chunk_holds`), taking its turn at the
recovery of lost chunks (:mod:`ris.workers.recovery`), and serving its Prometheus
``/metrics`` (``RIS_METRICS_PORT``). A Celery worker bootstep, so these start with the worker
(after its pool: a prefork pool's children are forked first) and stop with it."""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any

from celery import bootsteps
from celery.signals import task_received

from ris.common.chunks import ChunkLedger
from ris.common.jobs import JobTracker, redis_client
from ris.common.settings import Settings
from ris.workers.chunk_holds import ChunkHolds
from ris.workers.leases import Periodic
from ris.workers.recovery import Recovery

log = logging.getLogger(__name__)


def duties_step(settings: Settings) -> type[bootsteps.StartStopStep]:
    """The bootstep class to add to a worker of ``settings`` (``app.steps["worker"]``)."""

    class WorkerDuties(bootsteps.StartStopStep):
        requires = ("celery.worker.components:Pool",)

        def __init__(self, worker: Any, **kwargs: Any) -> None:
            super().__init__(worker, **kwargs)
            self.threads: list[Periodic] = []

        def start(self, worker: Any) -> None:
            client = redis_client(settings)
            ledger = ChunkLedger(client, settings.result_ttl_s, settings.lease_s)
            holds = ChunkHolds(ledger, worker.hostname)
            tracker = JobTracker(client, settings.result_ttl_s)
            recovery = Recovery(settings, worker.app, tracker, ledger, worker.hostname)
            self.threads = [
                holds.thread,
                Periodic("recovery", settings.recovery_interval_s, recovery.beat),
            ]
            # A chunk is held as soon as it is taken, not at the next renewal.
            task_received.connect(lambda **_: holds.thread.wake(), weak=False)
            for thread in self.threads:
                thread.start()
            if settings.metrics_port:
                from ris.common.metrics import serve_worker_metrics

                try:
                    serve_worker_metrics(settings.metrics_port)
                    log.info("metrics on :%d/metrics", settings.metrics_port)
                except OSError as exc:  # several workers on one host: the first one has it
                    log.warning("metrics not served on port %d: %s", settings.metrics_port, exc)

        def stop(self, worker: Any) -> None:
            for thread in self.threads:
                thread.stop()
            if folder := os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
                shutil.rmtree(folder, ignore_errors=True)

    return WorkerDuties
