"""Near-duplicate groups: pair precision and recall on generated copies, and the time taken.

    python benchmarks/duplicates.py [--originals 12] [--thresholds 0.6,0.7,0.8,0.9]

Originals are photos scikit-image and scikit-learn ship; each gets the copies ``ris eval
--near-duplicates`` makes (crop, resize, JPEG q=15, blur, rotate, colour shift, flip, text
overlay); the other shipped photos are distractors. All are indexed by a real worker, then
``ris duplicates``'s code runs at each threshold. A true pair is two images of the same
original (the original and a copy, or two copies); a found pair is two images in one group.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import DATA, LocalCluster, machine


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--originals", type=int, default=12)
    parser.add_argument("--thresholds", default="0.5,0.6,0.7,0.75,0.8,0.85,0.9")
    args = parser.parse_args()

    with LocalCluster() as cluster:  # first: the Celery app must see its Redis
        return run(cluster, args)


def run(cluster: LocalCluster, args: argparse.Namespace) -> int:
    from common.duplicates import pair_set
    from producer.demo import sample_photos
    from producer.evaluation import make_copies

    photos = sorted(str(p) for p in sample_photos(DATA / "src").iterdir())
    originals, distractors = photos[: args.originals], photos[args.originals :]
    work = Path(tempfile.mkdtemp(prefix="ris-bench-dup-"))
    copies = make_copies(originals, work)
    truth_groups: dict[str, list[str]] = {o: [o] for o in originals}
    for pairs in copies.values():
        for copy, original in pairs:
            truth_groups[original].append(copy)
    truth = pair_set(truth_groups.values())
    everything = photos + [c for pairs in copies.values() for c, _ in pairs]
    print(
        f"machine: {machine()}; {len(originals)} originals x {len(copies)} copies, "
        f"{len(distractors)} distractors: {len(everything)} images, {len(truth)} true pairs"
    )
    cluster.start_workers(1)
    from common.settings import get_settings
    from producer.client import Producer
    from producer.duplicates import find_duplicates

    producer = Producer(get_settings())
    job = producer.ingest(everything)
    producer.wait(job, timeout_s=1800)
    print(f"threshold {'precision':>9} {'recall':>7} {'groups':>6} {'seconds':>7}")
    for threshold in [float(t) for t in args.thresholds.split(",")]:
        started = time.perf_counter()
        found = find_duplicates(producer, threshold)
        took = time.perf_counter() - started
        got = pair_set(found.groups)
        hit = len(got & truth)
        precision = hit / len(got) if got else 1.0
        recall = hit / len(truth)
        print(
            f"{threshold:>9.2f} {precision:>9.3f} {recall:>7.3f} "
            f"{len(found.groups):>6} {took:>7.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
