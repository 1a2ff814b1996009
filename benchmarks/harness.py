"""What both benchmarks need: a deterministic image set, a private Redis + Milvus Lite server,
real ``ris worker`` processes, and memory readings of those processes."""

from __future__ import annotations

import os
import platform
import random
import subprocess
import tempfile
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageEnhance, ImageOps

if TYPE_CHECKING:
    from ris.common.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "ris_data" / "bench"


def machine() -> str:
    """A one-line description of this machine, printed beside every figure."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, Python {platform.python_version()}"


def benchmark_images(n: int) -> list[Path]:
    """``n`` distinct photo-like JPEGs (about 640x480): random crops, flips and tone changes of
    the photos scikit-image and scikit-learn ship. Made once (on every core) and cached under
    ris_data/bench."""
    from ris.producer.demo import sample_photos

    folder = DATA / "images"
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"img_{i:05d}.jpg" for i in range(n)]
    missing = [i for i, p in enumerate(paths) if not p.exists()]
    if missing:
        sources = sorted(str(p) for p in sample_photos(DATA / "src").iterdir())
        with ProcessPoolExecutor(
            initializer=_load_sources, initargs=(sources,), mp_context=get_context("spawn")
        ) as pool:
            list(pool.map(_make_image, [(i, str(paths[i])) for i in missing], chunksize=32))
    return paths


_SOURCES: list[Image.Image] = []


def _load_sources(sources: list[str]) -> None:
    _SOURCES.extend(Image.open(p).convert("RGB") for p in sources)


def _make_image(job: tuple[int, str]) -> None:
    i, path = job
    rng = random.Random(i)
    src = _SOURCES[i % len(_SOURCES)]
    w, h = src.size
    cw, ch = int(w * rng.uniform(0.5, 1.0)), int(h * rng.uniform(0.5, 1.0))
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    img = src.crop((x, y, x + cw, y + ch)).resize((640, 480))
    if rng.random() < 0.5:
        img = ImageOps.mirror(img)
    img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.7, 1.3))
    img.save(path, "JPEG", quality=rng.randint(80, 95))


def rss_mib(pid: int) -> tuple[float, float]:
    """(current, peak) resident memory of process ``pid`` in MiB, from /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (a Celery worker's pool processes)."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@dataclass
class LocalCluster:
    """A private Redis and Milvus Lite server, and the settings that point at them."""

    settings: Settings = field(init=False)
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _changes: dict[str, Any] = field(default_factory=dict)
    _redis: subprocess.Popen[bytes] | None = None
    _tmp: Path | None = None

    def __enter__(self) -> LocalCluster:
        from ris.producer.local_redis import start_redis

        self._tmp = Path(tempfile.mkdtemp(prefix="ris-bench-"))
        url, self._redis = start_redis(workdir=self._tmp)
        self._changes = {"redis_url": url, "milvus_uri": str(self._tmp / "bench.db")}
        self.new_collection()
        return self

    def _settings(self, **changes: Any) -> Settings:
        # Built, not copied: a changed device brings its own defaults (batch, decoding).
        from ris.common.settings import Settings

        return Settings(**{**self._changes, **changes})

    def new_collection(self, **changes: Any) -> Settings:
        """Point at a fresh, empty collection (and any other settings ``changes``)."""
        self._changes |= {"collection": f"bench_{uuid.uuid4().hex[:6]}", **changes}
        self.settings = self._settings()
        return self.settings

    def start_workers(
        self,
        count: int,
        concurrency: int | None = None,
        queue: str = "cpu",
        log: Path | None = None,
        **changes: Any,
    ) -> None:
        """Start ``count`` real ``ris worker`` processes (``changes``: their own settings) and
        wait until each answers a ping (``log``: append their INFO log there)."""
        from ris.common.celery_app import make_app
        from ris.producer.local_worker import start_worker_process

        settings = self._settings(**changes)
        app = make_app(settings)
        for _ in range(count):
            self.workers.append(
                start_worker_process(
                    app,
                    queue,
                    env=settings.to_env(),
                    concurrency=concurrency,
                    loglevel="INFO" if log else "WARNING",
                    output=open(log, "ab") if log else subprocess.DEVNULL,  # noqa: SIM115
                    timeout_s=300,
                )
            )
        self._warm_up(2 * count * (concurrency or 8), queue)

    def _warm_up(self, queries: int, queue: str) -> None:
        # A worker answers pings before its pool processes have loaded the model: run a few
        # queries so that no timed run pays for loading.
        from ris.producer.client import Producer

        probe = DATA / "warmup.jpg"
        Image.new("RGB", (64, 64), (90, 120, 150)).save(probe)
        producer = Producer(self.settings)
        for task_id in [producer.submit_query(str(probe), 1, queue) for _ in range(queries)]:
            producer.collect(task_id, timeout_s=300)

    def worker_pids(self) -> list[int]:
        """The pool processes that do the work (children of each worker)."""
        return [c for w in self.workers for c in children(w.pid)] or [w.pid for w in self.workers]

    def stop_workers(self) -> None:
        for w in self.workers:
            w.terminate()
        for w in self.workers:
            w.wait(60)
        self.workers.clear()

    def __exit__(self, *exc: object) -> None:
        import gc

        from ris.common.store.lite_server import stop_lite_server

        self.stop_workers()
        gc.collect()  # finished AsyncResults unsubscribe from Redis while it still runs
        if self._tmp is not None:
            stop_lite_server(self._tmp / "bench.db")
        if self._redis is not None:
            self._redis.terminate()
            self._redis.wait(10)
