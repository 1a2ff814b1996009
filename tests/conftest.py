"""Real services for the tests: a private Redis, a Milvus Lite file served over gRPC, and real
``ris worker`` processes. No mocks.

The environment is set in ``pytest_configure``, before any test module imports the Celery app.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from pydantic import SecretStr

from tests.helpers import start_worker, stop_worker
from tests.milvus_server import MilvusServer, MilvusServerUnavailable

if TYPE_CHECKING:  # imported late: the Celery app must see the test environment
    from ris.producer.client import Producer

_STATE: dict[str, object] = {}


def pytest_configure(config: pytest.Config) -> None:
    from ris.common.local_redis import redis_answers, start_redis

    tmp = Path(tempfile.mkdtemp(prefix="ris-tests-"))
    _STATE["tmp"] = tmp
    try:
        url, proc = start_redis(workdir=tmp)
        _STATE["redis_proc"] = proc
    except RuntimeError:
        # No redis-server binary: fall back to one given by the environment.
        url = os.environ.get("RIS_REDIS_URL", "redis://127.0.0.1:6379/15")
        if not redis_answers(url):
            raise
    os.environ.update(
        {
            "RIS_REDIS_URL": url,
            "RIS_MILVUS_URI": str(tmp / "milvus.db"),
            "RIS_COLLECTION": f"test_{uuid.uuid4().hex[:8]}",
            "RIS_DECODE_THREADS": "2",
            "RIS_LITE_REGISTRY_DIR": str(tmp / "lite-servers"),
        }
    )
    _STATE["redis_url"] = url


def pytest_unconfigure(config: pytest.Config) -> None:
    from ris.common.lite_server import stop_lite_server

    tmp = _STATE.get("tmp")
    if isinstance(tmp, Path):
        stop_lite_server(tmp / "milvus.db")
    proc = _STATE.get("redis_proc")
    if isinstance(proc, subprocess.Popen):
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="session")
def tmp_root() -> Path:
    return Path(str(_STATE["tmp"]))


@pytest.fixture(scope="session")
def redis_url() -> str:
    return str(_STATE["redis_url"])


@pytest.fixture(scope="session")
def worker(tmp_root: Path) -> Iterator[subprocess.Popen[bytes]]:
    """One real cpu-queue worker for the session."""
    proc = start_worker("cpu", "cpu-main@%h", log=tmp_root / "worker.log")
    yield proc
    stop_worker(proc)


@pytest.fixture(scope="session")
def photos(tmp_root: Path) -> Path:
    """The natural photos scikit-image and scikit-learn ship, in a folder of their own."""
    from ris.producer.demo import sample_photos

    return sample_photos(tmp_root / "photos")


@pytest.fixture(scope="session")
def producer() -> Producer:
    from ris.common.settings import get_settings
    from ris.producer.client import Producer

    return Producer(get_settings())


@pytest.fixture(scope="session")
def milvus_server(tmp_root: Path) -> Iterator[MilvusServer]:
    """A real Milvus standalone server (authorization on), or a skip saying why there is none."""
    server = MilvusServer(tmp_root / "milvus-server")
    try:
        server.start()
    except MilvusServerUnavailable as exc:
        pytest.skip(f"Milvus server unavailable: {exc}")
    yield server
    server.stop()
    # The server unpacks its 250 MB of binaries into its data folder: do not leave them behind.
    shutil.rmtree(server.root, ignore_errors=True)


@dataclass
class Backend:
    """One Milvus back end with its own worker: ``env`` points ris processes at it."""

    name: str
    env: dict[str, str]
    producer: Producer


@pytest.fixture(scope="module", params=["lite", "server"])
def backend(request: pytest.FixtureRequest, redis_url: str) -> Iterator[Backend]:
    """Each test using it runs on Milvus Lite (the session's worker) and on a Milvus server
    (a worker of its own, on another Redis database so the two workers share no queue)."""
    from ris.common.settings import get_settings
    from ris.producer.client import Producer

    if request.param == "lite":
        request.getfixturevalue("worker")
        yield Backend("lite", {}, request.getfixturevalue("producer"))
        return
    server: MilvusServer = request.getfixturevalue("milvus_server")
    env = {**server.env(), "RIS_REDIS_URL": redis_url.rsplit("/", 1)[0] + "/1"}
    tmp_root: Path = request.getfixturevalue("tmp_root")
    proc = start_worker("cpu", "cpu-server@%h", env=env, log=tmp_root / "worker-server.log")
    settings = get_settings().model_copy(
        update={
            "redis_url": SecretStr(env["RIS_REDIS_URL"]),
            "milvus_uri": server.uri,
            "milvus_token": SecretStr(server.token),
        }
    )
    yield Backend("server", env, Producer(settings))
    stop_worker(proc)
