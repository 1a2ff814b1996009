"""Prometheus metrics on real processes: a real worker's ``/metrics`` (prefork: its pool's
counts summed) parses, holds no path or id label, and counts what an ingest did; ``ris serve``'s
``/metrics`` wants the token, counts requests by route template and serves queue gauges equal
to the Redis list lengths; a real Prometheus server scrapes a worker and ``ris serve`` during
an ingest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ris.producer.client import Producer
from tests.api_server import Server, start_server
from tests.helpers import ROOT, free_port, settings_for, stop_worker, wait_until


def scrape(port: int, token: str | None = None) -> dict[str, float]:
    """``name{labels}`` -> value of every sample a ``/metrics`` endpoint serves."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}"] = s.value
    return out


IDLE = "idle"  # a queue no worker consumes


@pytest.fixture(scope="module")
def metrics_worker(tmp_root: Path, redis_url: str) -> Iterator[tuple[int, dict[str, str]]]:
    """A worker on a queue of its own, serving /metrics on a free port; prefork, two pool
    processes (their counts must add up)."""
    port = free_port()
    env = {
        "RIS_METRICS_PORT": str(port),
        "RIS_QUEUES": f"cpu,gpu,metrics,{IDLE}",
        "RIS_COLLECTION": f"metrics_{uuid.uuid4().hex[:6]}",
    }
    from ris.common.celery_app import make_app
    from ris.producer.local_worker import start_worker_process

    proc = start_worker_process(
        make_app(settings_for(env)),
        "metrics",
        env=env,
        concurrency=2,
        output=open(tmp_root / "metrics-worker.log", "ab"),  # noqa: SIM115
    )
    yield port, env
    stop_worker(proc)


def test_a_workers_metrics_count_an_ingest_and_carry_no_path_or_id(
    metrics_worker: tuple[int, dict[str, str]], photos: Path, tmp_path: Path
) -> None:
    port, env = metrics_worker
    before = scrape(port)
    images = sorted(str(p) for p in photos.iterdir())
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    producer = Producer(settings_for({**env, "RIS_CHUNK_SIZE": "4"}))
    job = producer.ingest([*images, str(tmp_path / "broken.jpg")], queue="metrics")
    progress = producer.wait(job, timeout_s=300)
    chunks = -(-progress.total // 4)
    done = "ris_chunks_total{outcome=done}"

    def counted() -> dict[str, float] | None:
        now = scrape(port)  # a task's counts land just after its progress
        return now if now.get(done, 0) - before.get(done, 0) >= chunks else None

    after = wait_until(counted, 30, "the chunks counted")
    gained = {k: v - before.get(k, 0) for k, v in after.items()}
    assert gained["ris_images_indexed_total{}"] == progress.indexed == len(images)
    assert gained["ris_images_failed_total{reason=decode}"] == 1
    assert gained["ris_stage_seconds_count{stage=milvus_write}"] == chunks
    assert gained["ris_model_batch_size_sum{}"] >= len(images)
    labels = {k for k in after if "{" in k and not k.endswith("{}")}
    for sample in labels:
        assert "/" not in sample and job not in sample, sample


TOKEN = "metrics-test-token"


@pytest.fixture(scope="module")
def api(metrics_worker: tuple[int, dict[str, str]], tmp_root: Path) -> Iterator[Server]:
    """``ris serve`` with a token, beside the metrics worker."""
    _, env = metrics_worker
    server = start_server(
        "127.0.0.1", tmp_root / "metrics-api.log", {**env, "RIS_API_TOKEN": TOKEN}
    )
    yield server
    server.stop()


def test_the_api_serves_its_metrics_behind_the_token(api: Server) -> None:
    port = int(api.url.rsplit(":", 1)[1])
    assert api.call("GET", "/metrics", auth=False).status_code == 401
    assert api.call("GET", "/api/jobs/no-such-job").status_code == 404
    found = scrape(port, TOKEN)
    assert found["ris_http_requests_total{method=GET,route=/api/jobs/{job_id},status=404}"] >= 1
    assert found["ris_http_requests_total{method=GET,route=/metrics,status=401}"] >= 1
    for sample in found:
        assert "no-such-job" not in sample


def test_the_queue_gauge_is_the_redis_list_length_while_no_worker_consumes_it(
    api: Server, metrics_worker: tuple[int, dict[str, str]], photos: Path
) -> None:
    """A job on a queue nobody consumes: ``ris_queue_messages`` equals ``LLEN`` of the queue
    (what `redis-cli llen` reads), and the job's paths are pending."""
    _, env = metrics_worker
    producer = Producer(settings_for({**env, "RIS_CHUNK_SIZE": "2"}))
    port = int(api.url.rsplit(":", 1)[1])
    before = scrape(port, TOKEN)
    job = producer.ingest(sorted(str(p) for p in photos.iterdir())[:6], queue=IDLE)
    try:
        found = scrape(port, TOKEN)
        assert found[f"ris_queue_messages{{queue={IDLE}}}"] == producer.tracker.r.llen(IDLE) == 3
        assert found["ris_paths_pending{}"] == before["ris_paths_pending{}"] + 6
        assert found["ris_jobs_running{}"] == before["ris_jobs_running{}"] + 1
    finally:
        producer.tracker.r.delete(IDLE)
        producer.tracker.forget_running(job)


def test_ris_metrics_serves_the_queue_gauges_with_no_worker_and_no_api(
    metrics_worker: tuple[int, dict[str, str]], photos: Path, tmp_path: Path
) -> None:
    """The exporter role (`ris metrics`) alone: ``ris_queue_messages`` of the idle queue is
    its LLEN."""
    _, env = metrics_worker
    port = free_port()
    exporter = subprocess.Popen(
        [sys.executable, "-m", "ris.producer.cli", "metrics", "--host", "127.0.0.1"],
        cwd=ROOT,
        env={**os.environ, **env, "RIS_METRICS_EXPORTER_PORT": str(port)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    producer = Producer(settings_for({**env, "RIS_CHUNK_SIZE": "3"}))
    job = producer.ingest(sorted(str(p) for p in photos.iterdir())[:6], queue=IDLE)
    try:
        found = wait_until(lambda: _scrape_or_none(port), 60, "ris metrics answering")
        assert found[f"ris_queue_messages{{queue={IDLE}}}"] == producer.tracker.r.llen(IDLE) == 2
        assert found["ris_paths_pending{}"] >= 6
    finally:
        exporter.terminate()
        exporter.wait(20)
        producer.tracker.r.delete(IDLE)
        producer.tracker.forget_running(job)


def _scrape_or_none(port: int) -> dict[str, float] | None:
    try:
        return scrape(port)
    except OSError:
        return None


def test_a_real_prometheus_scrapes_the_worker_and_the_api(
    metrics_worker: tuple[int, dict[str, str]], api: Server, photos: Path, tmp_path: Path
) -> None:
    prometheus = "/usr/bin/prometheus"
    if not Path(prometheus).exists():
        pytest.skip("no Prometheus server (Debian: apt-get install prometheus)")
    port, env = metrics_worker
    api_port = int(api.url.rsplit(":", 1)[1])
    web = free_port()
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: ris-worker\n    static_configs: [{{targets: ['127.0.0.1:{port}']}}]\n"
        f"  - job_name: ris-api\n    authorization: {{credentials_file: {token_file}}}\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{api_port}']}}]\n"
    )
    server = subprocess.Popen(
        [prometheus, f"--config.file={config}", f"--web.listen-address=127.0.0.1:{web}",
         f"--storage.tsdb.path={tempfile.mkdtemp(dir=tmp_path)}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:

        def query(expr: str) -> float | None:
            url = f"http://127.0.0.1:{web}/api/v1/query?query={quote(expr)}"
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:
                    result = json.load(resp)["data"]["result"]
            except OSError:
                return None
            return float(result[0]["value"][1]) if result else None

        wait_until(lambda: query("sum(up)") == 2.0, 60, "Prometheus scraping worker and API")
        start = query("ris_images_indexed_total") or 0.0
        images = sorted(str(p) for p in photos.iterdir())[:6]
        producer = Producer(settings_for({**env, "RIS_COLLECTION": f"prom_{uuid.uuid4().hex[:6]}"}))
        job = producer.ingest(images, queue="metrics")
        assert producer.wait(job, timeout_s=300).indexed == len(images)
        assert wait_until(
            lambda: query("ris_images_indexed_total") == start + len(images),
            30,
            "Prometheus seeing the images indexed",
        )
        assert wait_until(
            lambda: query('ris_queue_messages{queue="metrics"}') == 0.0,
            30,
            "the queue gauge back at 0",
        )
    finally:
        server.terminate()
        server.wait(30)
