"""What a worker does for the cluster beside running tasks, in its main process: holding the
chunks it took under leases (:mod:`ris.workers.chunk_holds`) and taking its turn at the
recovery of lost chunks (:mod:`ris.workers.recovery`). A Celery worker bootstep, so both
threads start with the worker (after its pool: a prefork pool's children are forked first)
and stop with it."""

from __future__ import annotations

from typing import Any

from celery import bootsteps
from celery.signals import task_received

from ris.common.chunks import ChunkLedger
from ris.common.jobs import JobTracker, redis_client
from ris.common.settings import Settings
from ris.workers.chunk_holds import ChunkHolds
from ris.workers.leases import Periodic
from ris.workers.recovery import Recovery


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

        def stop(self, worker: Any) -> None:
            for thread in self.threads:
                thread.stop()

    return WorkerDuties
