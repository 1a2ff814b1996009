"""Insert rate into Milvus: the store's packed upsert against pymilvus's row upsert (what the
store used before), same vectors, same batches, alternating rounds, in one run.

    python benchmarks/inserts.py [--milvus-uri http://HOST:19530 --milvus-token root:PW]
        [--rows 20000] [--batch 1000] [--rounds 3]

Without ``--milvus-uri`` it starts the test suite's Milvus server (``pip install
milvus==2.3.5``, the dev extra) and measures Milvus Lite too.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def _rows(vectors: np.ndarray, start: int) -> list[Any]:
    from ris.common.contracts import ImageRow

    return [
        ImageRow(
            id=start + i,
            vector=v,
            path=f"/bench/{start + i:08d}.jpg",
            sha256=f"{start + i:064x}",
            width=640,
            height=480,
            ingested_at=1_790_000_000_000,
            size=123_456,
            mtime_ns=1_790_000_000_000_000_000,
        )
        for i, v in enumerate(vectors)
    ]


def _pymilvus_rows(store: Any, rows: Sequence[Any]) -> None:
    """The baseline: pymilvus's own row upsert (dicts, the vector a list of floats)."""
    names = [f["name"] for f in store.client.describe_collection(store.name)["fields"]]
    dicts = [{n: getattr(r, n) for n in names} | {"vector": r.vector.tolist()} for r in rows]
    store.client.raw.upsert(store.name, dicts, timeout=600)


def measure(settings: Any, vectors: np.ndarray, batch: int, rounds: int) -> tuple[float, float]:
    """Rows/s of (pymilvus row upsert, packed upsert), best round of each."""
    from ris.common.store import ImageStore

    store = ImageStore(settings, "synthetic", vectors.shape[1])
    ways: dict[str, Callable[[Sequence[Any]], None]] = {
        "pymilvus": lambda rows: _pymilvus_rows(store, rows),
        "packed": store.upsert,
    }
    best = dict.fromkeys(ways, 0.0)
    try:
        store.upsert(_rows(vectors[:batch], 0))  # warm up: connection, schema cache
        offset = len(vectors)
        for round_ in range(rounds):
            # Each way goes first in every other round: the server's background work (sealing,
            # indexing) after one way's writes does not fall on the same way each time.
            for name, write in sorted(ways.items(), reverse=bool(round_ % 2)):
                started = time.perf_counter()
                for s in range(0, len(vectors), batch):
                    write(_rows(vectors[s : s + batch], offset + s))
                best[name] = max(best[name], len(vectors) / (time.perf_counter() - started))
                offset += len(vectors)
        written = batch + offset - len(vectors)  # the warm-up's rows, then every round's
        assert store.count() == written, f"{store.count()} rows stored, {written} written"
    finally:
        store.drop()
        store.close()
    return best["pymilvus"], best["packed"]


def main() -> int:
    sys.path.insert(0, str(ROOT))
    from pydantic import SecretStr

    from benchmarks.harness import machine
    from ris.common.settings import Settings
    from ris.common.store.lite_server import stop_lite_server

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--milvus-uri")
    parser.add_argument("--milvus-token")
    parser.add_argument("--rows", type=int, default=20_000, help="rows per round and way")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((args.rows, 1280)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    print(f"machine: {machine()}; {args.rows:,} rows of 1280-d per round, batch {args.batch}")
    base = {"collection": f"inserts_{uuid.uuid4().hex[:6]}"}
    with tempfile.TemporaryDirectory(prefix="ris-inserts-") as tmp:
        targets: list[tuple[str, dict[str, Any]]] = []
        server = None
        if args.milvus_uri:
            token = SecretStr(args.milvus_token) if args.milvus_token else None
            targets.append(("server", {"milvus_uri": args.milvus_uri, "milvus_token": token}))
        else:
            from tests.milvus_server import MilvusServer

            server = MilvusServer(Path(tmp) / "server")
            server.start()
            targets.append(
                ("server", {"milvus_uri": server.uri, "milvus_token": SecretStr(server.token)})
            )
            targets.append(("lite", {"milvus_uri": str(Path(tmp) / "lite.db")}))
        try:
            print(f"{'back end':<10}{'pymilvus rows/s':>17}{'packed rows/s':>15}{'ratio':>8}")
            for label, update in targets:
                settings = Settings(**base, **update)
                before, after = measure(settings, vectors, args.batch, args.rounds)
                print(f"{label:<10}{before:>17,.0f}{after:>15,.0f}{after / before:>7.2f}x")
                if label == "lite":
                    stop_lite_server(Path(update["milvus_uri"]))
        finally:
            if server:
                server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
