"""The model menu on the real system: a worker running the int8 model indexes the shipped photos
and `ris search` finds each one's altered copy's original first; a collection built by one
model refuses the other, in one line, for `ris info` and `ris ingest` alike (vectors of two
models never share a collection)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ris.producer.demo import altered_copy
from tests.helpers import run_cli, start_worker, stop_worker

INT8 = "efficientnet-lite0-int8"
QUEUE = "int8"


@pytest.fixture(scope="module")
def int8_env(tmp_root: Path, redis_url: str) -> Iterator[dict[str, str]]:
    """A worker of the int8 model on a queue and collection of its own (its export cached in
    RIS_MODEL_CACHE_DIR: built once, on first use, by the worker)."""
    env = {
        "RIS_MODEL": INT8,
        "RIS_QUEUES": f"cpu,gpu,{QUEUE}",
        "RIS_COLLECTION": f"int8_{uuid.uuid4().hex[:6]}",
    }
    worker = start_worker(QUEUE, env=env, log=tmp_root / "int8-worker.log")
    yield env
    stop_worker(worker)


def test_an_int8_worker_indexes_and_finds_each_original_first(
    int8_env: dict[str, str], photos: Path, tmp_path: Path
) -> None:
    out = run_cli("ingest", str(photos), "--queue", QUEUE, "--quiet", env=int8_env).stdout
    count = len(list(photos.iterdir()))
    assert f"{count} indexed, 0 unchanged, 0 failed" in out, out
    copies = [altered_copy(p, tmp_path / f"{p.stem}.jpg") for p in sorted(photos.iterdir())]
    found = json.loads(
        run_cli(
            "search", *map(str, copies), "--queue", QUEUE, "--top-k", "1", "--json", env=int8_env
        ).stdout
    )
    assert [Path(r["hits"][0]["path"]).stem for r in found] == [c.stem for c in copies]


def test_a_collection_of_one_model_refuses_the_other_in_one_line(
    int8_env: dict[str, str], photos: Path, worker: object
) -> None:
    """A collection made by the int8 worker, read by a producer of the fp32 model; and one
    made by the fp32 worker (the session's), written through the int8 worker."""
    one = str(sorted(photos.iterdir())[0])
    int8_made = {**int8_env, "RIS_COLLECTION": f"int8b_{uuid.uuid4().hex[:6]}"}
    run_cli("ingest", one, "--queue", QUEUE, "--quiet", env=int8_made)
    info = run_cli("info", env={**int8_made, "RIS_MODEL": "efficientnet-lite0"}, check=False)
    lines = info.stderr.strip().splitlines()
    assert info.returncode == 1 and len(lines) == 1, info.stderr
    assert f"holds {{'model': '{INT8}'" in lines[0], lines
    fp32_made = {**int8_env, "RIS_COLLECTION": f"fp32_{uuid.uuid4().hex[:6]}"}
    run_cli("ingest", one, "--quiet", env={**fp32_made, "RIS_MODEL": "efficientnet-lite0"})
    out = run_cli("ingest", str(photos), "--queue", QUEUE, "--quiet", env=fp32_made).stdout
    count = len(list(photos.iterdir()))
    assert f"(0 indexed, 0 unchanged, {count} failed" in out, out
    failures = [line for line in out.splitlines() if line.startswith("  FAILED ")]
    assert failures and all(
        "not indexed: SchemaMismatchError: collection" in line
        and "holds {'model': 'efficientnet-lite0'," in line
        for line in failures
    ), failures
