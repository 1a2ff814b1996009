"""Real services for the tests: a private Redis, a Milvus Lite file served over gRPC, and real
``ris worker`` processes. No mocks. Also the data both tiers share: the sample photos and what
is built from them.

Two tiers, one folder each: tests in ``tests/unit/`` are marked ``unit`` here and need no
service (``pytest -m unit``); tests in ``tests/system/`` are marked ``system`` and get the
session's Redis. Services start on first use, in session fixtures, so a unit run starts none:
``pytest_configure`` only picks their addresses and sets the RIS_* environment, before any test
module imports the Celery app.
"""

from __future__ import annotations

import csv
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from pydantic import SecretStr

from tests.helpers import Backend, start_worker, stop_worker
from tests.milvus_server import MilvusServer, MilvusServerUnavailable

if TYPE_CHECKING:  # imported late: the Celery app must see the test environment
    from ris.producer.client import Producer
    from ris.workers.loading import Item

_STATE: dict[str, object] = {}
# Fixtures that start a service (or a process that needs one): no unit test may reach them.
SERVICE_FIXTURES = {"redis_url", "worker", "producer", "milvus_server", "backend"}


def pytest_configure(config: pytest.Config) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="ris-tests-"))
    _STATE["tmp"] = tmp
    if shutil.which("redis-server"):
        # The port is held (bound, not listening) until the Redis fixture starts the server,
        # so no other process is given it meanwhile.
        hold = socket.socket()
        hold.bind(("127.0.0.1", 0))
        _STATE["redis_port_hold"] = hold
        url = f"redis://127.0.0.1:{hold.getsockname()[1]}/0"
    else:  # no redis-server binary: one given by the environment
        url = os.environ.get("RIS_REDIS_URL", "redis://127.0.0.1:6379/15")
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


TIERS = {"unit": Path(__file__).parent / "unit", "system": Path(__file__).parent / "system"}


@pytest.hookimpl(tryfirst=True)  # before -m deselects by the markers added here
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test by its folder (``unit/``: ``unit``, ``system/``: ``system``); refuse a
    test outside both, a unit test that would reach a service fixture, and a system test
    marked ``unit``."""
    for item in items:
        tier = next((t for t, folder in TIERS.items() if item.path.is_relative_to(folder)), None)
        if tier is None:
            raise pytest.UsageError(f"{item.nodeid}: tests live in tests/unit/ or tests/system/")
        if tier == "system":
            if item.get_closest_marker("unit") is not None:
                raise pytest.UsageError(f"system test {item.nodeid} is marked unit")
            item.add_marker(pytest.mark.system)
            continue
        item.add_marker(pytest.mark.unit)
        reached = SERVICE_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        if reached:
            raise pytest.UsageError(f"unit test {item.nodeid} uses {sorted(reached)}")


def pytest_sessionfinish(session: pytest.Session) -> None:
    """A run of unit tests only must have started no service: fail it if one did."""
    items = getattr(session, "items", [])
    if not items or any(item.get_closest_marker("unit") is None for item in items):
        return
    tmp = Path(str(_STATE["tmp"]))
    started = [
        name
        for name, yes in (
            ("redis-server", "redis_proc" in _STATE),
            ("a Milvus Lite server", (tmp / "lite-servers").exists()),
        )
        if yes
    ]
    if started:
        session.config.get_terminal_writer().line(
            f"\nunit tests started {', '.join(started)}", red=True
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_unconfigure(config: pytest.Config) -> None:
    from ris.common.store.lite_server import stop_lite_server

    tmp = _STATE.get("tmp")
    if isinstance(tmp, Path):
        stop_lite_server(tmp / "milvus.db")


@pytest.fixture(scope="session")
def tmp_root() -> Path:
    return Path(str(_STATE["tmp"]))


@pytest.fixture(scope="session")
def redis_url(tmp_root: Path) -> Iterator[str]:
    """The session's Redis, started on the port ``pytest_configure`` chose."""
    from ris.producer.local_redis import redis_answers, start_redis

    url = str(_STATE["redis_url"])
    hold = _STATE.pop("redis_port_hold", None)
    if not isinstance(hold, socket.socket):
        if not redis_answers(url):
            raise RuntimeError(f"no redis-server binary and no Redis answers at {url}")
        yield url
        return
    port = hold.getsockname()[1]
    hold.close()
    _, proc = start_redis(port, workdir=tmp_root)
    _STATE["redis_proc"] = proc
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture(autouse=True)
def _system_tests_have_redis(request: pytest.FixtureRequest) -> None:
    """Every system test runs with the session's Redis, as the RIS_* environment says."""
    if request.node.get_closest_marker("system") is not None:
        request.getfixturevalue("redis_url")


@pytest.fixture(scope="session")
def worker(tmp_root: Path, redis_url: str) -> Iterator[subprocess.Popen[bytes]]:
    """One real cpu-queue worker for the session."""
    proc = start_worker("cpu", "cpu-main@%h", log=tmp_root / "worker.log")
    yield proc
    stop_worker(proc)


@pytest.fixture(scope="session")
def photos(tmp_root: Path) -> Path:
    """The natural photos scikit-image and scikit-learn ship, in a folder of their own."""
    from ris.producer.demo import sample_photos

    return sample_photos(tmp_root / "photos")


@pytest.fixture(scope="module")
def photo_items(photos: Path) -> list[Item]:
    """The photos as the worker's loader takes them: (path, bytes) items, sorted by path."""
    from ris.workers.loading import Item

    return [Item(str(p), p.read_bytes()) for p in sorted(photos.iterdir())]


@pytest.fixture(scope="module")
def toy_dataset(photos: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An evaluation data set (``ris eval``) in both layouts, train/ and test/ folders and
    dataset.csv: three classes, each one photo's variants; four indexed, one query per class."""
    from PIL import Image, ImageOps

    def variants(img: Image.Image) -> list[Image.Image]:
        w, h = img.size
        return [
            img,
            ImageOps.mirror(img),
            img.crop((w // 10, h // 10, w, h)),
            img.resize((w // 2, h // 2)),
            ImageOps.mirror(img).crop((0, 0, w * 9 // 10, h * 9 // 10)),
        ]

    root = tmp_path_factory.mktemp("toy")
    rows: list[dict[str, object]] = []
    for label in ("chelsea", "coffee", "rocket"):
        src = next(photos.glob(f"{label}.*"))
        with Image.open(src) as img:
            each = variants(img.convert("RGB"))
        for i, variant in enumerate(each):
            split = "test" if i == len(each) - 1 else "train"
            target = root / split / label / f"{label}_{i}.jpg"
            target.parent.mkdir(parents=True, exist_ok=True)
            variant.save(target, quality=90)
            rows.append(
                {
                    "id": len(rows),
                    "path": str(target.relative_to(root)),
                    "label": label,
                    "split": split,
                }
            )
    with open(root / "dataset.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["id", "path", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return root


@pytest.fixture(scope="session")
def producer(redis_url: str) -> Producer:
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
