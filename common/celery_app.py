"""The Celery app shared by producer and workers: broker, serialisation, routing, reliability."""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from common.settings import Settings, get_settings

INGEST_TASK = "ris.ingest_chunk"
SEARCH_TASK = "ris.search"


def make_app(settings: Settings) -> Celery:
    """Build the Celery app for ``settings``."""
    url = settings.redis_url.get_secret_value()
    app = Celery("ris", broker=url, backend=url, include=["workers.tasks"])
    app.conf.update(
        # JSON only: a pickled message is rejected, never executed.
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        # Routing: every task goes to the queue the producer names (cpu by default);
        # a worker consumes the queues it is started with.
        task_queues=[Queue(q) for q in settings.queues],
        task_default_queue=settings.queues[0],
        # A task is acknowledged after it ran, and requeued if its worker died, so a crash
        # loses no chunk; writes are idempotent upserts, so a redelivery duplicates nothing.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_s,
            # kombu scans for messages of dead workers on every 10th tick of this interval;
            # keep the scan period well under the visibility timeout (10 s ticks by default).
            "unacked_restore_interval": min(10, max(1, settings.visibility_timeout_s // 100)),
        },
        result_backend_transport_options={"visibility_timeout": settings.visibility_timeout_s},
        broker_connection_retry_on_startup=True,
        # Publishing rides out a broker restart of about half a minute.
        task_publish_retry_policy={
            "max_retries": 12,
            "interval_start": 0.5,
            "interval_step": 1,
            "interval_max": 5,
        },
        # Nothing holds a worker forever (a stuck read, a hung library call).
        task_soft_time_limit=settings.task_soft_time_limit_s or None,
        task_time_limit=settings.task_time_limit_s or None,
        result_expires=settings.result_ttl_s,
        result_extended=True,
        # Events and STARTED state make tasks visible in Flower.
        task_track_started=True,
        worker_send_task_events=True,
        task_send_sent_event=True,
        worker_hijack_root_logger=False,
    )
    return app


def is_gpu_queue(queue: str) -> bool:
    """Queues named ``gpu...`` are consumed only by workers that run the model on CUDA."""
    return queue.startswith("gpu")


app = make_app(get_settings())
