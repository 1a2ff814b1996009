"""The real model without any service: its ONNX export against torch (cached, then run without
torch), half precision, an unknown model's error; path ids; and the index settings a Milvus
back end allows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ris.common.images import decode, normalise
from ris.common.models import get_spec
from ris.common.settings import Settings, get_settings
from ris.common.store import path_id
from ris.workers.export import export_onnx
from ris.workers.networks import load_network


@pytest.fixture(scope="module")
def batch(photos: Path) -> np.ndarray:
    spec = get_spec("efficientnet-lite0")
    names = ("chelsea.png", "coffee.png", "rocket.jpg", "astronaut.png")
    return np.stack(
        [decode((photos / n).read_bytes(), spec.input_size, 10**8).pixels for n in names]
    )


def test_onnx_export_matches_torch(batch: np.ndarray) -> None:
    from ris.workers.embedder import Embedder

    base = get_settings()
    onnx = Embedder(base.model_copy(update={"runtime": "onnx"})).embed(batch)
    torch_ = Embedder(base.model_copy(update={"runtime": "torch"})).embed(batch)
    assert onnx.shape == (4, 1280)
    np.testing.assert_allclose(np.linalg.norm(onnx, axis=1), 1.0, rtol=1e-5)
    assert np.min(np.sum(onnx * torch_, axis=1)) > 0.9999
    # Different photos are not near-identical.
    sims = onnx @ onnx.T
    assert np.max(sims[~np.eye(4, dtype=bool)]) < 0.9


def test_fp16_weights_and_activations_stay_within_1e_2_cosine(batch: np.ndarray) -> None:
    """The model survives half precision (no overflow, small rounding), computed on the CPU:
    what the GPU worker's fp16 relies on, checked on every machine."""
    import torch

    spec = get_spec("efficientnet-lite0")
    model = load_network(spec).eval()
    x = torch.from_numpy(normalise(batch, spec.mean, spec.std))
    with torch.inference_mode():
        fp32 = model(x).numpy()
        fp16 = model.half()(x.half()).float().numpy()
    fp32 /= np.linalg.norm(fp32, axis=1, keepdims=True)
    fp16 /= np.linalg.norm(fp16, axis=1, keepdims=True)
    assert np.isfinite(fp16).all()
    assert np.min(np.sum(fp32 * fp16, axis=1)) > 1 - 1e-2


def test_fp16_on_cuda_stays_within_1e_2_cosine_of_fp32(batch: np.ndarray) -> None:
    import torch

    from ris.workers.embedder import Embedder

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    base = get_settings().model_copy(update={"runtime": "torch", "device": "cuda"})
    fp32 = Embedder(base).embed(batch)
    fp16 = Embedder(base.model_copy(update={"fp16": True})).embed(batch)
    assert np.min(np.sum(fp32 * fp16, axis=1)) > 1 - 1e-2


def test_onnx_export_is_cached_and_then_runs_without_torch(tmp_path: Path) -> None:
    import subprocess
    import sys

    spec = get_spec("efficientnet-lite0")
    first = export_onnx(spec, tmp_path)
    mtime = first.stat().st_mtime_ns
    assert export_onnx(spec, tmp_path) == first and first.stat().st_mtime_ns == mtime
    # A worker that runs the cached export (and its task module) never imports torch.
    code = (
        "import sys, numpy as np; import ris.workers.tasks; "
        "from ris.workers.embedder import Embedder; from ris.common.settings import Settings; "
        "v = Embedder(Settings(model_cache_dir=sys.argv[1])).embed("
        "np.zeros((2, 224, 224, 3), np.uint8)); "
        "print(v.shape, sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert proc.stdout.strip() == "(2, 1280) []", proc.stdout + proc.stderr


def test_unknown_model_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown model 'vgg'"):
        get_spec("vgg")


def test_path_id_is_stable_and_positive() -> None:
    assert path_id("/data/a.jpg") == path_id("/data/a.jpg")
    assert path_id("/data/a.jpg") != path_id("/data/b.jpg")
    assert 0 <= path_id("/data/a.jpg") < 2**63


def test_milvus_lite_refuses_server_only_index_types() -> None:
    from pydantic import ValidationError

    from ris.common.settings import Settings

    with pytest.raises(ValidationError, match="HNSW needs a Milvus server"):
        Settings(milvus_uri="some.db", index_type="HNSW")
    assert Settings(milvus_uri="http://milvus:19530", index_type="HNSW").index_type == "HNSW"


def test_index_parameters_follow_the_index_type() -> None:
    server = "http://milvus:19530"
    hnsw = Settings(milvus_uri=server, index_type="HNSW")
    assert hnsw.index_params == {"M": 16, "efConstruction": 200}
    assert hnsw.search_params == {"ef": 128}
    assert Settings(milvus_uri=server, index_type="FLAT").search_params == {}
    tuned = Settings(milvus_uri=server, index_type="IVF_SQ8", search_params={"nprobe": 8})
    assert (tuned.index_params, tuned.search_params) == ({"nlist": 1024}, {"nprobe": 8})
