"""Job accounting in a real Redis under redelivery: a chunk processed twice (its worker cut off,
the chunk sent to another) reports each path once, whatever order the reports arrive in."""

from __future__ import annotations

import socket
import uuid

import pytest

from ris.common.jobs import JobTracker, keepalive_options, redis_client
from ris.common.settings import get_settings


@pytest.fixture
def tracker() -> JobTracker:
    return JobTracker(redis_client(get_settings()), ttl_s=600)


def _job(tracker: JobTracker, paths: list[str]) -> str:
    job_id = uuid.uuid4().hex[:8]
    tracker.create(job_id, "cpu")
    tracker.set_total(job_id, len(paths), 1, finished=True)
    return job_id


def test_late_reports_of_an_old_delivery_do_not_undo_indexed(tracker: JobTracker) -> None:
    paths = [f"/img/{i}.png" for i in range(10)]
    job = _job(tracker, paths)
    # The redelivered chunk ran first on another worker and indexed everything ...
    tracker.mark(job, paths, [], {})
    # ... then the old delivery, back from a partition, finds the rows and says "unchanged",
    # and its failure handler reports the broken connection it saw.
    tracker.mark(job, [], paths[:5], {})
    tracker.mark(job, [], [], dict.fromkeys(paths[5:], "not indexed: ConnectionError"))
    p = tracker.progress(job)
    assert (p.indexed, p.unchanged, p.failed) == (10, 0, 0)
    assert p.indexed + p.unchanged + p.failed == p.total and p.finished
    assert tracker.failures(job) == {}


def test_indexed_after_unchanged_or_failed_counts_once(tracker: JobTracker) -> None:
    paths = [f"/img/{i}.png" for i in range(6)]
    job = _job(tracker, paths)
    tracker.mark(job, [], paths[:3], {p: "broken pipe" for p in paths[3:]})
    tracker.mark(job, paths, [], {})  # the delivery that wrote the rows reports late
    p = tracker.progress(job)
    assert (p.indexed, p.unchanged, p.failed) == (6, 0, 0)
    assert tracker.failures(job) == {}


def test_unchanged_beats_failed_and_failures_keep_their_reason(tracker: JobTracker) -> None:
    paths = ["/a.png", "/b.png", "/c.png"]
    job = _job(tracker, paths)
    tracker.mark(job, [], ["/a.png"], {"/b.png": "truncated", "/c.png": "missing"})
    tracker.mark(job, [], [], {"/a.png": "late failure"})
    tracker.mark(job, [], ["/b.png"], {})
    p = tracker.progress(job)
    assert (p.indexed, p.unchanged, p.failed) == (0, 2, 1)
    assert tracker.failures(job) == {"/c.png": "missing"}
    assert tracker.unprocessed(job, [*paths, "/d.png"]) == ["/d.png"]


def test_redis_clients_detect_dead_connections() -> None:
    """Progress and result-backend connections carry TCP keepalive and a user timeout."""
    from ris.common.celery_app import make_app

    app = make_app(get_settings())
    opts = keepalive_options(get_settings())
    assert socket.TCP_USER_TIMEOUT in opts
    for client in (redis_client(get_settings()), app.backend.client):
        client.ping()
        conn = client.connection_pool.get_connection()
        try:
            assert conn._sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            for opt, value in opts.items():
                assert conn._sock.getsockopt(socket.IPPROTO_TCP, opt) == value
        finally:
            client.connection_pool.release(conn)
