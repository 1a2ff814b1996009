"""The real Milvus collection's guarantees (the session's Milvus Lite): a collection built by
one model refuses another, and a refused index type fails loudly, never leaving an unsearchable
collection."""

from __future__ import annotations

import numpy as np
import pytest

from ris.common.contracts import ImageRow
from ris.common.errors import SchemaMismatchError
from ris.common.settings import Settings, get_settings
from ris.common.store import ImageStore


def test_collection_refuses_another_model() -> None:
    settings: Settings = get_settings().model_copy(update={"collection": "test_identity"})
    store = ImageStore(settings, "efficientnet-lite0", 1280)
    with pytest.raises(SchemaMismatchError, match="efficientnet-lite0"):
        ImageStore(settings, "resnet50", 2048)
    store.drop()


def test_refused_index_is_an_error_and_a_later_run_indexes_the_collection() -> None:
    """Over http:// nothing tells a Lite server from a standalone one: Milvus Lite refuses
    HNSW at index creation, which must fail loudly, never leave an unsearchable collection."""
    from ris.common.store import milvus_uri

    base = {"milvus_uri": milvus_uri(get_settings()), "collection": "test_refused_index"}
    with pytest.raises(SchemaMismatchError, match=r"refused index HNSW .*local mode"):
        ImageStore(Settings(**base, index_type="HNSW"), "efficientnet-lite0", 4)
    store = ImageStore(Settings(**base, index_type="IVF_FLAT"), "efficientnet-lite0", 4)
    try:
        vectors = np.eye(4, dtype=np.float32)
        fields = {"sha256": "0" * 64, "width": 1, "height": 1, "ingested_at": 0}
        rows = [ImageRow(id=i, vector=v, path=f"/{i}", **fields) for i, v in enumerate(vectors)]
        store.upsert(rows)
        store.flush()
        assert [hits[0][0] for hits in store.search(vectors, 1)] == [0, 1, 2, 3]
    finally:
        store.drop()
