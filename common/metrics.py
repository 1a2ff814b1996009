"""Every Prometheus metric the project exports, named in one place.

Names follow Prometheus's conventions: a ``ris_`` prefix, ``_total`` counters, ``_seconds``
in base units, and bounded label sets (a failure's reason class, a stage, a route template:
never a path, a job or a task id).

Workers (``ris worker``, ``RIS_METRICS_PORT``) count what their tasks do; a prefork worker's
children write to files in ``PROMETHEUS_MULTIPROC_DIR``, which its main process serves summed
(:func:`serve_worker_metrics`; ``ris worker`` sets that folder up before this module is
imported, as prometheus_client picks its storage at import). The API (``ris serve``) counts
requests, and the queue and job gauges are read from Redis at scrape time
(:class:`QueueCollector`), so they need no worker: an autoscaler reads them while none runs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    import redis

    from ris.common.settings import Settings

# Each side's metrics in a registry of its own: the API does not show workers' counters at 0.
WORKER = CollectorRegistry()
API = CollectorRegistry()
ProcessCollector(registry=API)

# --- workers ---------------------------------------------------------------------------------
IMAGES_INDEXED = Counter(
    "ris_images_indexed", "Images embedded and written (new or changed).", registry=WORKER
)
IMAGES_UNCHANGED = Counter(
    "ris_images_unchanged",
    "Images found indexed already with the same content (skipped).",
    registry=WORKER,
)
IMAGES_FAILED = Counter(
    "ris_images_failed",
    "Images that could not be indexed, by reason class.",
    ["reason"],
    registry=WORKER,
)
CHUNKS = Counter(
    "ris_chunks",
    "Ingest chunks by outcome: done, retried, failed (for good), skipped (done already), "
    "resent (by the recovery).",
    ["outcome"],
    registry=WORKER,
)
STAGE_SECONDS = Histogram(
    "ris_stage_seconds",
    "Seconds per chunk in each stage: lookup, read_decode_embed, milvus_write.",
    ["stage"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
    registry=WORKER,
)
MODEL_BATCH_SIZE = Histogram(
    "ris_model_batch_size",
    "Images per model call.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
    registry=WORKER,
)
MILVUS_ERRORS = Counter("ris_milvus_errors", "Milvus calls that failed.", registry=WORKER)
REDIS_ERRORS = Counter(
    "ris_redis_errors", "Redis calls that failed (retried or given up).", registry=WORKER
)

# --- the HTTP API ----------------------------------------------------------------------------
HTTP_REQUESTS = Counter(
    "ris_http_requests",
    "HTTP requests by route template, method and status code.",
    ["route", "method", "status"],
    registry=API,
)
HTTP_SECONDS = Histogram(
    "ris_http_request_duration_seconds",
    "Seconds to answer an HTTP request, by route template and method.",
    ["route", "method"],
    registry=API,
)
SEARCH_ROUND_TRIP = Histogram(
    "ris_search_round_trip_seconds",
    "Seconds from sending a search task to having its answer (queue, embed, search).",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=API,
)

# Failure reasons (free text written by the loader) mapped to a bounded set of classes.
_REASONS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(pattern, re.I))
    for name, pattern in (
        ("time_limit", r"time limit"),
        ("refused", r"task is for milvus|outside|not allowed|refused"),
        ("store", r"^not indexed:"),
        ("missing", r"no such file|not found|broken symbolic link|does not exist|not a regular"),
        ("too_large", r"too large|larger than|pixels|exceeds"),
        ("decode", r"image|truncated|corrupt|format|decode|empty file|header"),
    )
)


def reason_class(reason: str) -> str:
    """The bounded label of a failure ``reason`` (decode, missing, too_large, refused,
    store, time_limit, other)."""
    for name, pattern in _REASONS:
        if pattern.search(reason):
            return name
    return "other"


def count_outcomes(indexed: int, unchanged: int, failed: Iterator[str] | list[str]) -> None:
    """Count a chunk's images: ``failed`` are the failure reasons."""
    IMAGES_INDEXED.inc(indexed)
    IMAGES_UNCHANGED.inc(unchanged)
    for reason in failed:
        IMAGES_FAILED.labels(reason_class(reason)).inc()


# --- serving ---------------------------------------------------------------------------------
def serve_worker_metrics(port: int, address: str = "0.0.0.0") -> None:
    """Serve ``/metrics`` on ``port``: every process of this worker, summed."""
    from prometheus_client import start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = WORKER
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # every process's files, summed
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    start_http_server(port, addr=address, registry=registry)


class QueueCollector(Collector):
    """Queue and job gauges read from Redis at scrape time: messages waiting per queue (the
    Redis lists Celery's transport uses), running jobs, and their paths not yet processed."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.r, self.settings = client, settings

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from ris.common.jobs import JobTracker

        waiting = GaugeMetricFamily(
            "ris_queue_messages", "Messages waiting on each queue.", labels=["queue"]
        )
        pipe = self.r.pipeline(transaction=False)
        for queue in self.settings.queues:
            pipe.llen(queue)
        for queue, length in zip(self.settings.queues, pipe.execute(), strict=True):
            waiting.add_metric([queue], int(length))
        yield waiting
        tracker = JobTracker(self.r, self.settings.result_ttl_s)
        running, pending = 0, 0
        for job_id in tracker.running():
            try:
                progress = tracker.progress(job_id)
            except KeyError:  # expired: the recovery forgets it
                continue
            if not progress.finished:
                running += 1
                pending += progress.pending
        yield GaugeMetricFamily("ris_jobs_running", "Ingest jobs not finished.", value=running)
        yield GaugeMetricFamily(
            "ris_paths_pending", "Paths of running jobs not processed yet.", value=pending
        )


def serve_queue_gauges(settings: Settings, address: str = "0.0.0.0") -> None:
    """``ris metrics``: serve the queue and job gauges on ``RIS_METRICS_EXPORTER_PORT`` until
    stopped (what an autoscaler or an alert reads while no worker runs)."""
    import time

    from prometheus_client import start_http_server

    from ris.common.jobs import redis_client

    registry = CollectorRegistry()
    registry.register(QueueCollector(redis_client(settings), settings))
    start_http_server(settings.metrics_exporter_port, addr=address, registry=registry)
    while True:
        time.sleep(3600)
