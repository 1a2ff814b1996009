"""Near-duplicate groups: pair precision and recall on generated copies, and the time taken.

    python benchmarks/duplicates.py [--originals 12] [--thresholds 0.6,0.7,0.8,0.9]
    python benchmarks/duplicates.py --existing DB.db:COLLECTION   # time and memory at scale

Originals are photos scikit-image and scikit-learn ship; each gets the copies ``ris eval
--near-duplicates`` makes (crop, resize, JPEG q=15, blur, rotate, colour shift, flip, text
overlay); the other shipped photos are distractors. All are indexed by a real worker, then
``ris duplicates``'s code runs at each threshold. A true pair is two images of the same
original (the original and a copy, or two copies); a found pair is two images in one group.
"""

from __future__ import annotations

import argparse
import os
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
    parser.add_argument(
        "--existing",
        metavar="DB:COLLECTION",
        help="time `ris duplicates` over an existing Milvus Lite collection (e.g. the 100k "
        "rows benchmarks/library.py leaves) with two worker processes, and their peak memory",
    )
    args = parser.parse_args()
    if args.existing:
        with LocalCluster() as cluster:
            return at_scale(cluster, *args.existing.rsplit(":", 1))

    with LocalCluster() as cluster:
        return run(cluster, args)


def at_scale(cluster: LocalCluster, db: str, collection: str) -> int:
    import threading

    from benchmarks.harness import rss_mib

    settings = cluster.new_collection(milvus_uri=db, collection=collection)
    cluster.start_workers(1, concurrency=2)
    from ris.producer.client import Producer
    from ris.producer.duplicates import find_duplicates

    producer = Producer(settings)
    pids = cluster.worker_pids()
    peak = dict.fromkeys(pids, 0.0)
    done = threading.Event()

    def watch() -> None:  # VmHWM of a pool process counts its model load too
        while not done.wait(1.0):
            for pid in pids:
                peak[pid] = max(peak[pid], rss_mib(pid)[0])

    threading.Thread(target=watch, daemon=True).start()
    started = time.perf_counter()
    found = find_duplicates(producer, settings.duplicates_threshold)
    took = time.perf_counter() - started
    done.set()
    producer_peak = rss_mib(os.getpid())[1]
    print(
        f"machine: {machine()}; {found.images} images, {len(found.groups)} groups, "
        f"{found.pairs} pairs in {took:.1f} s with 2 worker processes; peak RSS MiB: "
        f"workers {', '.join(f'{v:.0f}' for v in peak.values())}, producer {producer_peak:.0f}"
    )
    return 0


def run(cluster: LocalCluster, args: argparse.Namespace) -> int:
    from ris.common.duplicates import pair_set
    from ris.producer.demo import sample_photos
    from ris.producer.evaluation import make_copies

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
    from ris.producer.client import Producer
    from ris.producer.duplicates import find_duplicates

    producer = Producer(cluster.settings)
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
