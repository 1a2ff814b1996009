"""Retrieval quality of every offline model, through the real system (``ris eval``'s code):
Fashion-MNIST (class-balanced subset, folder layout), the textile images of
``conformal-clip-data`` (CSV layout), and near duplicates of the shipped photos among
Fashion-MNIST distractors. Prints a markdown table for the README.

    apt-get install dataset-fashion-mnist && pip install conformal-clip-data
    python benchmarks/eval_models.py [--models raw-pixels,efficientnet-lite0,...]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import DATA, LocalCluster, machine

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
FASHION_LABELS = ["tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                  "sneaker", "bag", "boot"]  # fmt: skip


def _idx(name: str) -> np.ndarray:
    with gzip.open(FASHION_DIR / name) as fh:
        data = fh.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def fashion_mnist(dest: Path, train_per_class: int, test_per_class: int, distractors: int) -> Path:
    """train/<label>/ + test/<label>/ from a class-balanced subset, and a distractors/ folder."""
    if (dest / "done").exists():
        return dest
    train_x, train_y = _idx("train-images-idx3-ubyte.gz"), _idx("train-labels-idx1-ubyte.gz")
    test_x, test_y = _idx("t10k-images-idx3-ubyte.gz"), _idx("t10k-labels-idx1-ubyte.gz")
    for split, xs, ys, per in (
        ("train", train_x, train_y, train_per_class),
        ("test", test_x, test_y, test_per_class),
    ):
        for c, label in enumerate(FASHION_LABELS):
            folder = dest / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in np.flatnonzero(ys == c)[:per]:
                Image.fromarray(xs[i]).save(folder / f"{i:05d}.png")
    folder = dest / "distractors"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(len(train_x) - distractors, len(train_x)):  # not among the subset above
        Image.fromarray(train_x[i]).save(folder / f"{i:05d}.png")
    (dest / "done").touch()
    return dest


def textiles(dest: Path) -> Path:
    """A CSV (path,label,split) over conformal-clip-data's simulated textile images: every
    fifth image of each class is a query."""
    import conformal_clip_data

    root = conformal_clip_data.textile_simulated_root()
    dest.mkdir(parents=True, exist_ok=True)
    table = dest / "textiles.csv"
    with open(table, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "path", "label", "split"])
        n = 0
        for label_dir in sorted(d for d in root.iterdir() if d.is_dir()):
            for i, path in enumerate(sorted(label_dir.iterdir())):
                writer.writerow([n, str(path), label_dir.name, "test" if i % 5 == 4 else "train"])
                n += 1
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models",
        default="raw-pixels,efficientnet-lite0,efficientnet-lite0-int8,efficientnet-lite0-gem,"
        "efficientnet-lite0-gem-int8,efficientnet-lite1,efficientnet-lite2",
    )
    parser.add_argument("--train-per-class", type=int, default=100)
    parser.add_argument("--test-per-class", type=int, default=20)
    parser.add_argument("--distractors", type=int, default=1000)
    args = parser.parse_args()

    from ris.producer.demo import sample_photos

    print(f"machine: {machine()}")
    fashion = fashion_mnist(
        DATA / "fashion", args.train_per_class, args.test_per_class, args.distractors
    )
    table = textiles(DATA / "textiles")
    photos = sample_photos(DATA / "src")
    distractors = sorted(str(p) for p in (fashion / "distractors").iterdir())
    rows = []
    with LocalCluster() as cluster:
        from ris.producer.client import Producer
        from ris.producer.evaluation import evaluate, evaluate_near_duplicates, load_dataset

        for model in args.models.split(","):
            settings = cluster.new_collection(model=model)
            cluster.start_workers(1)
            producer = Producer(settings)
            started = time.perf_counter()
            fm = evaluate(producer, load_dataset(fashion), "fashion", 10)
            tx = evaluate(producer, load_dataset(table), "textiles", 10)
            with tempfile.TemporaryDirectory() as tmp:
                nd = evaluate_near_duplicates(producer, str(photos), Path(tmp), distractors)
            cluster.stop_workers()
            rows.append((model, fm, tx, nd))
            print(
                f"{model}: fashion mAP@10 {fm.mean_average_precision:.3f}, textiles mAP@10 "
                f"{tx.mean_average_precision:.3f}, near-dup top-1 {nd.overall:.3f} "
                f"({time.perf_counter() - started:.0f}s)",
                flush=True,
            )

    fm0, tx0, nd0 = rows[0][1], rows[0][2], rows[0][3]
    print()
    print(
        f"Fashion-MNIST: {fm0.candidates} indexed, {fm0.queries} queries; textiles: "
        f"{tx0.candidates} indexed, {tx0.queries} queries; near duplicates: {nd0.originals} "
        f"photos x {len(nd0.top1)} transforms among {nd0.distractors} distractors"
    )
    print()
    print("| model | Fashion-MNIST P@1 | mHR@10 | mAP@10 | textiles P@1 | mHR@10 | mAP@10 "
          "| near-dup top-1 | ingest img/s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for model, fm, tx, nd in rows:
        print(
            f"| {model} | {fm.precision[1]:.3f} | {fm.mean_hit_ratio:.3f} | "
            f"{fm.mean_average_precision:.3f} | {tx.precision[1]:.3f} | {tx.mean_hit_ratio:.3f} | "
            f"{tx.mean_average_precision:.3f} | {nd.overall:.3f} | {fm.ingest_per_s:.0f} |"
        )
    print()
    print("near-duplicate top-1 per transform:")
    names = list(rows[0][3].top1)
    print("| model | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for model, _, _, nd in rows:
        print(f"| {model} | " + " | ".join(f"{nd.top1[n]:.2f}" for n in names) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
