"""What the job's bookkeeping costs in Redis: commands per chunk of a real ingest, and the
time of one chunk's lease round trips.

    python benchmarks/redis_calls.py [--images 1280] [--chunk 64] [--repeat 500]

Part 1 runs ``ris ingest`` of ``--images`` photo-like JPEGs through one real worker (every
setting at its default) against a private Redis and counts, per chunk: the round trips clients
made (``MONITOR``, by command, scripts counted once) and every command Redis ran, those run
inside scripts included (``INFO commandstats``). Run it in a checkout of an earlier commit too
(copy this file there) to see what a change adds.

Part 2 (this tree only) times one chunk's lease round trips, as the claims' 1.1 ms was
measured: the producer's record, the worker's hold, the done check, the row claims' take,
confirm before and after the write and release, and the finish; median and p95 of
``--repeat`` chunks of ``--chunk`` ids, and one renewal of a worker's holds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import LocalCluster, benchmark_images, machine


def commandstats(client: object) -> dict[str, int]:
    """Calls per Redis command since the last reset."""
    info = client.info("commandstats")  # type: ignore[attr-defined]
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in info.items()}


def ingest_commands(
    cluster: LocalCluster, paths: list[Path]
) -> tuple[int, Counter[str], dict[str, int]]:
    """Chunks of one ``ris ingest``, the round trips clients made (by command) and every
    command Redis ran (by command)."""
    import redis

    from ris.common.jobs import redis_client
    from ris.producer.client import Producer

    cluster.start_workers(1)
    producer = Producer(cluster.settings)
    producer.store_for(None, create=True).count()
    client = redis_client(cluster.settings)
    trips: Counter[str] = Counter()
    stop = threading.Event()
    watcher = redis.Redis.from_url(cluster.settings.redis_url.get_secret_value())

    def watch() -> None:
        with watcher.monitor() as monitor:
            while not stop.is_set():
                found = monitor.next_command()
                if found["client_type"] != "lua":  # a script's own commands are not trips
                    trips[found["command"].split(" ", 1)[0].lower()] += 1

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    time.sleep(0.5)
    client.config_resetstat()
    job = producer.ingest(str(p) for p in paths)
    progress = producer.wait(job, poll_s=1.0)
    stats = commandstats(client)
    stop.set()
    client.ping()  # wakes the monitor to see the stop
    thread.join(10)
    cluster.stop_workers()
    assert progress.failed == 0, progress
    chunks = -(-len(paths) // cluster.settings.chunk_size)
    return chunks, trips, stats


def _timed(repeat: int, one: Callable[[int], None]) -> tuple[float, float]:
    times = []
    for i in range(repeat):
        started = time.perf_counter()
        one(i)
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return statistics.median(times), times[int(0.95 * (len(times) - 1))]


def lease_round_trips(cluster: LocalCluster, chunk: int, repeat: int) -> None:
    """Part 2: one chunk's lease calls, timed."""
    try:
        from ris.common.chunks import ChunkLedger
        from ris.common.contracts import IngestChunk
        from ris.workers.claims import RowClaims
    except ImportError:
        print("part 2: this tree has no leases")
        return
    from ris.common.jobs import redis_client

    settings = cluster.settings
    client = redis_client(settings)
    ledger = ChunkLedger(client, 3600, settings.lease_s)
    claims = RowClaims(client, settings.lease_s, 60)
    job = uuid.uuid4().hex[:12]
    paths = [f"/bench/{job}/{i:05d}.jpg" for i in range(chunk)]

    def lifecycle(i: int) -> None:
        task_id = f"{job}-{i:06d}"
        ledger.record(IngestChunk(job_id=job, paths=paths, number=i))  # producer
        ledger.hold([(job, i, task_id)], "bench")  # worker's main process
        ledger.is_done(job, i)
        ids = range(i * chunk, (i + 1) * chunk)
        with claims.holding("bench:images", ids, task_id) as held:
            held.confirm()  # before the write
            held.confirm()  # after it
        ledger.finish(job, i, task_id)

    def claims_only(i: int) -> None:
        ids = range(i * chunk, (i + 1) * chunk)
        with claims.holding("bench:claims-only", ids, f"c{i}"):
            pass

    print(f"part 2: {repeat} chunks of {chunk} ids, local Redis (ms: median, p95)")
    holds = [(job, n, f"{job}-h{n}") for n in range(8)]
    ledger.hold(holds, "bench")
    for label, one in (
        ("row claims without the leases' checks (take + release)", claims_only),
        ("a chunk's whole bookkeeping with leases", lifecycle),
        ("one renewal of a worker's 8 held chunks", lambda i: ledger.renew([h[2] for h in holds])),
    ):
        med, p95 = _timed(repeat, one)
        print(f"  {label:<58}{med:6.2f}{p95:8.2f}")
    claims.renewer.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1280)
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=500)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    paths = benchmark_images(args.images)
    with LocalCluster() as cluster:
        cluster.new_collection(chunk_size=args.chunk)
        chunks, trips, stats = ingest_commands(cluster, paths)
        print(f"part 1: {args.images} images, {chunks} chunks of {args.chunk}, one worker")
        for label, counts in (("round trips", trips), ("commands run (scripts' included)", stats)):
            print(f"  Redis {label} per chunk: {sum(counts.values()) / chunks:.1f}")
            for name, calls in sorted(counts.items(), key=lambda kv: -kv[1]):
                if calls / chunks >= 0.05:
                    print(f"    {name:<14}{calls / chunks:7.2f}")
        lease_round_trips(cluster, args.chunk, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
