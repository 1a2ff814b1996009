"""Running across machines: queue routing between workers, Flower's view of real jobs, images
read over HTTP or from S3 instead of a shared mount."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from celery.result import AsyncResult

from ris.common.settings import get_settings
from ris.producer.client import Producer
from tests.helpers import ROOT, free_port, run_cli, start_worker, stop_worker, wait_until


def test_tasks_go_to_the_queue_asked_for(photos: Path, worker: subprocess.Popen[bytes]) -> None:
    """Two worker processes on two queues: each chunk and query runs where it was sent."""
    env = {"RIS_QUEUES": "cpu,gpu,bulk", "RIS_CHUNK_SIZE": "3"}
    bulk = start_worker("bulk", "bulk-1@%h", env=env)
    try:
        settings = get_settings().model_copy(
            update={"queues": ["cpu", "gpu", "bulk"], "chunk_size": 3}
        )
        producer = Producer(settings)
        images = sorted(str(p) for p in photos.iterdir())[:6]
        on_bulk = producer.ingest(images[:3], queue="bulk")
        on_cpu = producer.ingest(images[3:], queue="cpu")
        for job in (on_bulk, on_cpu):
            assert producer.wait(job, timeout_s=120).failed == 0
        query = producer.submit_query(images[0], top_k=3, queue="bulk")
        assert producer.collect(query).hits[0].path == images[0]

        def ran_on(task_id: str) -> str:
            return str(AsyncResult(task_id, app=producer.app).worker).split("@")[0]

        assert ran_on(f"{on_bulk}-000000") == "bulk-1"
        assert ran_on(query) == "bulk-1"
        assert ran_on(f"{on_cpu}-000000") == "cpu-main"
    finally:
        stop_worker(bulk)


def test_gpu_worker_without_cuda_refuses_to_start() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    proc = run_cli("worker", "--queue", "gpu", check=False, timeout=120)
    assert proc.returncode != 0
    assert "RIS_DEVICE=cuda" in proc.stderr
    proc = run_cli("worker", "--queue", "gpu", env={"RIS_DEVICE": "cuda"}, check=False)
    assert proc.returncode != 0
    assert "cannot start a GPU worker" in proc.stderr, proc.stderr


@pytest.fixture
def flower(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ris.producer.cli", "flower", "--db", str(tmp_path / "flower.db")],
        cwd=ROOT,
        env={
            **os.environ,
            "RIS_FLOWER_PORT": str(port),
            "RIS_FLOWER_BASIC_AUTH": "watcher:s3cret",
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            requests.get(f"{url}/healthcheck", timeout=1)
        except requests.ConnectionError:
            assert proc.poll() is None, "flower exited"
            return False
        return True

    wait_until(answers, 60, "Flower answering", every_s=0.3)
    yield url
    proc.terminate()
    proc.wait(20)


def test_flower_shows_the_tasks_of_a_real_job(
    flower: str, photos: Path, producer: Producer, worker: subprocess.Popen[bytes]
) -> None:
    assert requests.get(f"{flower}/api/tasks", timeout=5).status_code == 401
    time.sleep(2)  # Flower subscribes to the worker's events before the job starts
    images = sorted(str(p) for p in photos.iterdir())[:4]
    job = producer.ingest(images, job_id=f"flower-{os.urandom(3).hex()}")
    producer.wait(job, timeout_s=120)
    query = producer.submit_query(images[0], top_k=2)
    producer.collect(query)

    auth = ("watcher", "s3cret")
    chunk_id = f"{job}-000000"

    def both_succeeded() -> dict[str, Any] | None:
        tasks = requests.get(f"{flower}/api/tasks", auth=auth, timeout=5).json()
        done = all(tasks.get(t, {}).get("state") == "SUCCESS" for t in (chunk_id, query))
        return tasks if done else None

    tasks = wait_until(both_succeeded, 30, "Flower showing both tasks done", every_s=0.5)
    chunk, search = tasks[chunk_id], tasks[query]
    assert chunk["state"] == "SUCCESS" and search["state"] == "SUCCESS"
    assert chunk["name"] == "ris.ingest_chunk" and search["name"] == "ris.search"
    assert f"job={job}, chunk #0: 4 paths" in chunk["args"]
    assert Path(images[0]).name in search["args"]
    assert chunk["worker"].startswith("cpu-main@")


@pytest.fixture
def http_photos(photos: Path) -> Iterator[str]:
    """The photos served over HTTP on loopback, as from a machine with no shared mount."""
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(photos))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_images_are_read_from_urls(
    http_photos: str, photos: Path, tmp_path: Path, producer: Producer, worker: Any
) -> None:
    names = sorted(p.name for p in photos.iterdir())[:5]
    listing = tmp_path / "urls.txt"
    listing.write_text("".join(f"{http_photos}/{n}\n" for n in [*names, "no-such.jpg"]))
    out = run_cli("ingest", str(listing), "--quiet").stdout
    assert "5 indexed" in out and "1 failed" in out, out
    assert "no-such.jpg: no such file (URL not found)" in out
    # The same photo may be indexed from its local path too (other tests): a tie at the top.
    hits = producer.search([str(photos / names[2])], top_k=3)[0].hits
    by_path = {h.path: h.score for h in hits}
    assert by_path.get(f"{http_photos}/{names[2]}", 0) > 0.99, by_path


@pytest.fixture
def s3_photos(photos: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """The photos in a bucket of a local S3 server (moto), and the env that reaches it."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "ris-test",
        "AWS_SECRET_ACCESS_KEY": "ris-test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    s3 = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id="ris-test",
        aws_secret_access_key="ris-test",
        region_name="us-east-1",
    )
    s3.create_bucket(Bucket="photos")
    for path in sorted(photos.iterdir())[:5]:
        s3.upload_file(str(path), "photos", f"set/{path.name}")
    yield "s3://photos/set", env
    server.stop()


def test_images_are_read_from_s3(
    s3_photos: tuple[str, dict[str, str]], photos: Path, tmp_path: Path, producer: Producer
) -> None:
    """A worker with S3 credentials and no shared mount indexes s3:// URLs; bad ones fail alone."""
    prefix, aws_env = s3_photos
    env = {**aws_env, "RIS_QUEUES": "cpu,gpu,s3", "RIS_ALLOWED_URL_PREFIXES": "s3://photos/"}
    names = sorted(p.name for p in photos.iterdir())[:5]
    listing = tmp_path / "s3.txt"
    urls = [f"{prefix}/{n}" for n in [*names, "missing.jpg"]]
    listing.write_text("\n".join([*urls, "s3://elsewhere/x.jpg"]) + "\n")
    s3_worker = start_worker("s3", "s3-1@%h", env=env, log=tmp_path / "worker.log")
    try:
        out = run_cli("ingest", str(listing), "--queue", "s3", "--quiet", env=env).stdout
    finally:
        stop_worker(s3_worker)
    assert "5 indexed" in out and "2 failed" in out, out
    assert "missing.jpg: no such file (URL not found)" in out
    assert "s3://elsewhere/x.jpg: URL not allowed" in out
    hits = producer.search([str(photos / names[1])], top_k=3)[0].hits
    by_path = {h.path: h.score for h in hits}
    assert by_path.get(f"{prefix}/{names[1]}", 0) > 0.99, by_path
