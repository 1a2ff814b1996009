"""What only a Milvus server has: authentication, and the HNSW and IVF_SQ8 indexes."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from ris.common.contracts import ImageRow
from ris.common.settings import Settings
from ris.common.store import ImageStore
from tests.helpers import run_cli, wait_until
from tests.milvus_server import MilvusServer, sealed_segments

DIM = 1280
ROWS = 6000
QUERIES = 100
TOP_K = 10


def test_wrong_token_is_a_one_line_error_naming_the_uri(milvus_server: MilvusServer) -> None:
    env = {**milvus_server.env(), "RIS_MILVUS_TOKEN": "root:not-the-password"}
    proc = run_cli("info", env=env, check=False, timeout=120)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert milvus_server.uri in lines[0] and "RIS_MILVUS_TOKEN" in lines[0], lines[0]
    # The right token opens the same server (whose collection may not exist yet: info never
    # creates one, and says so).
    right = run_cli("info", env=milvus_server.env(), check=False, timeout=120)
    assert right.returncode == 0 or "does not exist" in right.stderr, right.stderr
    assert "RIS_MILVUS_TOKEN" not in right.stderr


def _clustered_unit_vectors(rng: np.random.Generator, n: int, clusters: int) -> np.ndarray:
    """Unit vectors around ``clusters`` centres: neighbourhoods like image embeddings have."""
    centres = rng.standard_normal((clusters, DIM)).astype(np.float32)
    points = centres[rng.integers(0, clusters, n)] + 0.6 * rng.standard_normal((n, DIM))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def _wait_indexed(store: ImageStore, rows: int, timeout: float = 180) -> None:
    """Until Milvus reports every row in the vector index (not searched brute force)."""
    desc: dict = {}

    def built() -> bool:
        nonlocal desc
        desc = store.client.describe_index(store.name, "vector")
        return (
            int(desc.get("indexed_rows", 0)) >= rows and int(desc.get("pending_index_rows", 0)) == 0
        )

    try:
        wait_until(built, timeout, every_s=0.5)
    except TimeoutError:
        raise TimeoutError(f"index of {store.name} not built in {timeout} s: {desc}") from None


@pytest.mark.parametrize(
    ("index_type", "index_params", "search_params"),
    [
        ("HNSW", None, None),  # the defaults of common/settings.py
        ("IVF_SQ8", {"nlist": 128}, {"nprobe": 16}),  # RIS_INDEX_PARAMS / RIS_SEARCH_PARAMS
    ],
)
def test_server_index_recall_at_10_against_exact_search(
    milvus_server: MilvusServer,
    index_type: str,
    index_params: dict[str, int] | None,
    search_params: dict[str, int] | None,
) -> None:
    """RIS_INDEX_TYPE builds that index on the server, with the parameters from settings, and
    its top 10 agrees with exact (numpy) search on at least 95 % of the results."""
    given = {"index_params": index_params, "search_params": search_params}
    settings = Settings(
        milvus_uri=milvus_server.uri,
        milvus_token=milvus_server.token,
        collection=f"recall_{index_type.lower()}_{uuid.uuid4().hex[:6]}",
        index_type=index_type,
        **{k: v for k, v in given.items() if v is not None},
    )
    rng = np.random.default_rng(7)
    vectors = _clustered_unit_vectors(rng, ROWS, clusters=60)
    store = ImageStore(settings, "synthetic", DIM)
    try:
        for start in range(0, ROWS, 1000):
            store.upsert(
                [
                    ImageRow(
                        id=i,
                        vector=vectors[i],
                        path=f"/v/{i}",
                        sha256="0" * 64,
                        width=1,
                        height=1,
                        ingested_at=0,
                    )
                    for i in range(start, min(start + 1000, ROWS))
                ]
            )
        store.flush()
        _wait_indexed(store, ROWS)
        info = store.index()
        assert info["index_type"] == index_type
        assert {k: int(v) for k, v in info["params"].items() if k in settings.index_params} == (
            settings.index_params
        )

        picks = rng.choice(ROWS, QUERIES, replace=False)
        queries = vectors[picks] + 0.3 * rng.standard_normal((QUERIES, DIM)).astype(np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :TOP_K]
        found = store.search(queries, TOP_K)
        overlap = [
            len({i for i, _ in hits} & set(truth)) for hits, truth in zip(found, exact, strict=True)
        ]
        recall = sum(overlap) / (QUERIES * TOP_K)
        print(f"{index_type} {settings.index_params} {settings.search_params}: recall@10 {recall}")
        assert recall >= 0.95, f"{index_type} recall@10 {recall:.3f}"
    finally:
        store.drop()
        store.close()


def test_the_server_keeps_the_deployed_segment_size(milvus_server: MilvusServer) -> None:
    """The compose file's segment tuning reaches the server: 30,000 1,280-d rows (150 MB) are
    one segment once flushed, where Milvus's defaults seal one at 512 MB x 0.23 (118 MB).
    Fewer, larger segments are what makes a search at a million rows fast (README)."""
    rows = 30_000
    settings = Settings(
        milvus_uri=milvus_server.uri,
        milvus_token=milvus_server.token,
        collection=f"segments_{uuid.uuid4().hex[:6]}",
        index_type="FLAT",
    )
    vectors = _clustered_unit_vectors(np.random.default_rng(3), 1000, clusters=10)
    store = ImageStore(settings, "synthetic", DIM)
    try:
        for start in range(0, rows, 1000):
            batch = range(start, start + 1000)
            store.upsert(
                [
                    ImageRow(
                        id=i,
                        vector=vectors[i % 1000],
                        path=f"/v/{i}",
                        sha256="0" * 64,
                        width=1,
                        height=1,
                        ingested_at=0,
                    )
                    for i in batch
                ],
                new_ids=set(batch),
            )
        store.flush()

        def all_sealed() -> list[int] | None:
            sealed = [n for n, _ in sealed_segments(store) or []]
            return sealed if sum(sealed) >= rows else None

        sealed = wait_until(all_sealed, 120, "the query node serving every row sealed", every_s=0.5)
        assert sealed == [rows]
    finally:
        store.drop()
        store.close()
