"""The model menu's own models, without any service: the int8 export builds offline from the
shipped weights and calibration images (onnxruntime's QDQ graph, cached), its vectors are unit
length and deterministic, and the int8 and GeM models find every photo's altered copy's
original; an int8 model is refused on torch or CUDA with one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from pydantic import ValidationError

from ris.common.images import decode
from ris.common.models import get_spec
from ris.common.settings import Settings
from ris.producer.demo import altered_copy
from ris.workers.embedder import Embedder
from ris.workers.export import export_onnx

INT8 = "efficientnet-lite0-int8"


@pytest.fixture(scope="module")
def int8_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache of its own: the int8 export is built here, from nothing."""
    return tmp_path_factory.mktemp("model-cache")


def _photos_and_copies(photos: Path, tmp: Path, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The shipped photos and their smaller, re-encoded copies, as the model sees them."""
    paths = sorted(photos.iterdir())
    originals = [decode(p.read_bytes(), size, 10**8).pixels for p in paths]
    copies = [
        decode(altered_copy(p, tmp / f"{p.stem}.jpg").read_bytes(), size, 10**8).pixels
        for p in paths
    ]
    return np.stack(originals), np.stack(copies)


def test_the_int8_export_builds_offline_and_is_cached(int8_cache: Path) -> None:
    path = export_onnx(get_spec(INT8), int8_cache)
    graph = onnx.load(str(path)).graph
    ops = {node.op_type for node in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # onnxruntime's QDQ format
    weights = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(weights) >= 60  # every conv's weights in int8
    assert sorted(int8_cache.iterdir()) == [path]  # the fp32 intermediate is gone
    mtime = path.stat().st_mtime_ns
    assert export_onnx(get_spec(INT8), int8_cache) == path
    assert path.stat().st_mtime_ns == mtime  # cached: not built again


@pytest.mark.parametrize("model", [INT8, "efficientnet-lite0-gem"])
def test_vectors_are_unit_length_deterministic_and_find_the_originals(
    model: str, int8_cache: Path, photos: Path, tmp_path: Path
) -> None:
    settings = Settings(model=model, model_cache_dir=int8_cache, inference_threads=1)
    size = get_spec(model).input_size
    originals, copies = _photos_and_copies(photos, tmp_path, size)
    first = Embedder(settings).embed(originals)
    again = Embedder(settings).embed(originals)  # a second session: another worker
    assert first.shape == (len(originals), 1280)
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(first, again)
    scores = Embedder(settings).embed(copies) @ first.T
    assert (scores.argmax(axis=1) == np.arange(len(originals))).all()


def test_the_int8_model_is_its_own_not_fp32s(int8_cache: Path, photos: Path) -> None:
    """Its vectors are close to the fp32 model's but not the same: a model of its own, which
    the collection records (tests/system/test_store.py refuses the mix)."""
    paths = sorted(photos.iterdir())[:6]
    batch = np.stack([decode(p.read_bytes(), 224, 10**8).pixels for p in paths])
    fp32 = Embedder(Settings(inference_threads=1)).embed(batch)
    int8 = Embedder(Settings(model=INT8, model_cache_dir=int8_cache)).embed(batch)
    cosines = np.sum(fp32 * int8, axis=1)
    assert cosines.min() > 0.8 and cosines.max() < 0.9999


@pytest.mark.parametrize(("runtime", "device"), [("torch", "cpu"), ("onnx", "cuda")])
def test_an_int8_model_runs_on_onnxruntime_on_the_cpu_only(runtime: str, device: str) -> None:
    with pytest.raises(ValidationError, match="int8 model for CPU workers"):
        Settings(model=INT8, runtime=runtime, device=device)
