"""The docker-compose stack, run for real where a Docker engine answers (skipped elsewhere).

Uses the images as they are (`docker compose build` first, or let `up` build them). Where the
public images cannot be pulled, stand-ins can be given through ``COMPOSE_FILE`` (an override
file) and ``RIS_INDEX_TYPE``; the test itself does not change.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.helpers import ROOT, compose_command, free_port, wait_until


def _engine_answers() -> bool:
    docker = shutil.which("docker")
    return bool(docker) and subprocess.run([docker, "info"], capture_output=True).returncode == 0


pytestmark = pytest.mark.skipif(not _engine_answers(), reason="no Docker engine answers here")


class Stack:
    def __init__(self, images: Path) -> None:
        self.project = f"ris-test-{uuid.uuid4().hex[:6]}"
        self.flower_port = free_port()
        self.env = {
            **os.environ,
            "REDIS_PASSWORD": uuid.uuid4().hex,
            "FLOWER_BASIC_AUTH": "watcher:s3cret",
            "API_TOKEN": uuid.uuid4().hex,
            "API_PORT": str(free_port()),
            "IMAGES_DIR": str(images),
            "REDIS_PORT": str(free_port()),
            "MILVUS_PORT": str(free_port()),
            "FLOWER_PORT": str(self.flower_port),
        }

    def compose(
        self, *args: str, timeout: float = 600, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [*compose_command(), "-p", self.project, *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert not check or proc.returncode == 0, f"docker compose {' '.join(args)}:\n{proc.stderr}"
        return proc

    def flower(self, path: str, auth: bool = True) -> requests.Response:
        url = f"http://127.0.0.1:{self.flower_port}{path}"
        return requests.get(url, auth=("watcher", "s3cret") if auth else None, timeout=10)

    def wait_for_workers(self, n: int, timeout_s: float = 120) -> None:
        """Until Flower (subscribed to events from then on) lists ``n`` workers."""

        def listed() -> bool:
            try:
                return len(self.flower("/api/workers?refresh=1").json()) >= n
            except (requests.ConnectionError, ValueError):
                return False

        wait_until(listed, timeout_s, f"Flower listing {n} workers", every_s=1)

    def ris(self, *args: str) -> str:
        """A `ris` command in a one-shot producer container."""
        return self.compose("run", "--rm", "--no-deps", "producer", *args).stdout


@pytest.fixture(scope="module")
def stack(photos: Path, tmp_root: Path) -> Iterator[Stack]:
    images = tmp_root / "stack-images"
    shutil.copytree(photos, images)
    (images / "broken.jpg").write_bytes(b"not an image")
    images.chmod(0o755)
    s = Stack(images)
    try:
        s.compose("up", "-d", "--wait", "--scale", "worker-cpu=2", "worker-cpu", "flower")
        s.wait_for_workers(2)
        yield s
    finally:
        s.compose("down", "-v", "--remove-orphans", timeout=300, check=False)


def test_the_stack_indexes_searches_and_shows_its_work(stack: Stack, photos: Path) -> None:
    n = len(list(photos.iterdir()))
    out = stack.ris()  # the producer service's own command: index everything under /images
    job = out.split(":", 1)[0].removeprefix("job ")
    assert f"{n} indexed" in out and "1 failed" in out, out
    assert "/images/broken.jpg: not an image" in out

    found = stack.ris("search", "/images/chelsea.png", "--top-k", "3", "--json")
    hits = json.loads(found)[0]["hits"]
    assert hits[0]["path"] == "/images/chelsea.png" and hits[0]["score"] > 0.999

    info = json.loads(stack.ris("info"))
    assert info["rows"] == n and len(info["workers"]) == 2

    assert stack.flower("/api/workers", auth=False).status_code == 401
    workers = stack.flower("/api/workers").json()
    assert len(workers) == 2 and all(name.startswith("cpu@") for name in workers)
    assert all(q["name"] == "cpu" for w in workers.values() for q in w["active_queues"])
    tasks = stack.flower("/api/tasks").json()
    names = {(t["name"], t["state"]) for t in tasks.values()}
    assert {("ris.ingest_chunk", "SUCCESS"), ("ris.search", "SUCCESS")} <= names

    # Redis keeps its append-only file on a volume: progress survives a restart.
    stack.compose("restart", "redis")
    assert f"job {job}: finished: {n + 1}/{n + 1} processed" in stack.ris("status", job)
