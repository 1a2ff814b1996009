"""``ris demo``: the whole system on one machine with nothing else installed.

Finds (or starts) a Redis, serves the Milvus Lite file, starts a worker, indexes a folder
(default: photos shipped by scikit-image and scikit-learn), queries with an altered copy of
one photo and draws the result grid.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from PIL import Image
from pydantic import SecretStr

from ris.common.settings import Settings
from ris.producer.local_redis import redis_answers, start_redis

SAMPLE_PHOTOS = (
    "astronaut.png",
    "brick.png",
    "camera.png",
    "chelsea.png",
    "coffee.png",
    "coins.png",
    "grass.png",
    "gravel.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "moon.png",
    "motorcycle_left.png",
    "page.png",
    "retina.jpg",
    "rocket.jpg",
    "text.png",
    "clock_motion.png",
    "color.png",
    "cell.png",
    "horse.png",
)


def sample_photos(dest: Path) -> Path:
    """Copy the photos that scikit-image and scikit-learn ship into ``dest``."""
    import skimage

    dest.mkdir(parents=True, exist_ok=True)
    sources = [Path(skimage.__file__).parent / "data" / n for n in SAMPLE_PHOTOS]
    try:
        import sklearn

        sources += sorted((Path(sklearn.__file__).parent / "datasets" / "images").glob("*.jpg"))
    except ImportError:
        pass
    for src in sources:
        if src.exists() and not (dest / src.name).exists():
            shutil.copyfile(src, dest / src.name)
    return dest


def altered_copy(src: Path, dest: Path) -> Path:
    """A smaller, re-encoded copy of ``src``: what a reverse image search is asked to find."""
    with Image.open(src) as img:
        rgb = img.convert("RGB")
        rgb.resize((rgb.width * 3 // 5, rgb.height * 3 // 5)).save(dest, "JPEG", quality=70)
    return dest


def run_demo(settings: Settings, folder: str | None, out: str) -> int:
    """Run the demo with ``settings``; returns the process exit code."""
    data_dir = Path("ris_data")
    started_redis = None
    if not redis_answers(settings.redis_url.get_secret_value()):
        url, started_redis = start_redis()
        settings = settings.model_copy(update={"redis_url": SecretStr(url)})
        print(f"no Redis answered; started one at {url}")

    from ris.producer.client import Producer
    from ris.producer.grid import draw_grid
    from ris.producer.inputs import expand_inputs
    from ris.producer.local_worker import start_worker_process

    images = Path(folder) if folder else sample_photos(data_dir / "samples")
    producer = Producer(settings)
    print("starting a worker (loads the model; the first run exports it to ONNX)...")
    worker = start_worker_process(producer.app, env=settings.to_env(), loglevel="WARNING")
    try:
        started = time.perf_counter()
        job_id = producer.ingest(list(expand_inputs([str(images)])))
        progress = producer.wait(job_id, timeout_s=1800)
        elapsed = time.perf_counter() - started
        print(
            f"indexed {images}: {progress.indexed} new, {progress.unchanged} unchanged, "
            f"{progress.failed} failed in {elapsed:.1f}s; {producer.store.count()} rows in "
            f"collection {settings.collection!r}"
        )
        for path, reason in producer.failures(job_id).items():
            print(f"  FAILED {path}: {reason}")
        candidates = sorted(
            p for p in images.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg")
        )
        if not candidates:
            print("no image to query with")
            return 1
        chosen = next((p for p in candidates if p.stem == "chelsea"), candidates[0])
        query = altered_copy(chosen, data_dir / f"query_{chosen.stem}.jpg")
        print(f"query: {query} (a 60% re-encoded copy of {chosen.name})")
        result = producer.search([str(query)], top_k=5)[0]
        if result.error:
            print(f"  error: {result.error}")
            return 1
        for rank, hit in enumerate(result.hits, 1):
            print(f"  {rank}. score={hit.score:.4f}  {hit.path}")
        print(f"result grid: {draw_grid([result], out, settings)}")
        return 0
    finally:
        worker.terminate()
        worker.wait(30)
        if started_redis is not None:
            started_redis.terminate()
