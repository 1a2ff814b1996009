"""The Celery app of producer and workers: broker, serialisation, routing, reliability.

Built from the settings by whoever needs one (:class:`ris.producer.client.Producer`,
``ris worker``); nothing is built at import. Workers register their tasks on it
(:func:`ris.workers.tasks.register_tasks`); the producer sends tasks by name.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.backends.redis import RedisBackend
from kombu import Queue

from ris.common.jobs import keepalive_options
from ris.common.settings import Settings


class KeepaliveRedisBackend(RedisBackend):
    """Celery's Redis result backend with the broker's TCP keepalive options, which Celery
    has no setting for: a dead result connection is noticed in seconds, not minutes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        opts = self.app.conf.broker_transport_options.get("socket_keepalive_options")
        if opts and "socket_keepalive" in self.connparams:
            self.connparams["socket_keepalive_options"] = opts


def make_app(settings: Settings) -> Celery:
    """Build the Celery app for ``settings``."""
    url = settings.redis_url.get_secret_value()
    backend = f"{__name__}:{KeepaliveRedisBackend.__name__}+{url}"
    app = Celery("ris", broker=url, backend=backend)
    dead_after = settings.redis_dead_after_s
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
        # loses no chunk; a redelivered chunk writes by upsert, so it duplicates nothing.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_s,
            # kombu scans for messages of dead workers on every 10th tick of this interval;
            # keep the scan period well under the visibility timeout (10 s ticks by default).
            "unacked_restore_interval": min(10, max(1, settings.visibility_timeout_s // 100)),
            # A connection cut off by a partition is dropped within seconds (keepalive, user
            # timeout, kombu's BRPOP check), so a healed worker reconnects at once.
            "socket_keepalive": True,
            "socket_keepalive_options": keepalive_options(settings),
            "socket_connect_timeout": dead_after,
            "health_check_interval": dead_after,
            # One reconnect-and-retry per command on a broken connection, so that an ack that
            # met a connection a partition broke reaches Redis once it healed; one that still
            # fails frees its prefetch slot all the same (ris.workers.broker_acks).
            "retry_on_timeout": True,
        },
        result_backend_transport_options={"visibility_timeout": settings.visibility_timeout_s},
        # A task state or result write on a broken connection reconnects and retries instead
        # of failing the task outside its body (which would lose the chunk).
        result_backend_always_retry=True,
        result_backend_max_retries=settings.result_backend_max_retries,
        result_backend_max_sleep_between_retries_ms=5000,
        redis_retry_on_timeout=True,
        redis_socket_keepalive=True,
        redis_socket_connect_timeout=dead_after,
        redis_backend_health_check_interval=dead_after,
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
