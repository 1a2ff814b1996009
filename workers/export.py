"""The ONNX export of a model's network, made once and cached (``RIS_MODEL_CACHE_DIR``): a
worker whose export is cached runs onnxruntime and never imports torch. An int8 model is the
fp32 export quantised (:mod:`ris.workers.quantise`), cached the same way."""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from dataclasses import replace
from pathlib import Path

from ris.common.models import ModelSpec
from ris.workers.networks import load_network, weights_id

log = logging.getLogger(__name__)

# Bump when the exported graph changes, so that cached exports are rebuilt.
_EXPORT_VERSION = 3
_OPSET = 17


def export_onnx(spec: ModelSpec, cache_dir: Path) -> Path:
    """Export ``spec``'s feature extractor to ONNX once (quantised, for an int8 model) and
    return the cached file.

    The cache key names the weights, the graph and the quantisation recipe, not the torch
    build, so that a worker that only runs ONNX finds its export without importing torch (or
    having it installed)."""
    key = f"{_EXPORT_VERSION}|{weights_id(spec)}|{_OPSET}"
    if spec.precision == "int8":
        from ris.workers.quantise import RECIPE_VERSION

        key += f"|int8-{RECIPE_VERSION}"
    key = hashlib.sha1(key.encode()).hexdigest()[:12]
    target = cache_dir / f"{spec.name}-{key}.onnx"
    if target.exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    if spec.precision == "int8":
        from ris.workers.quantise import quantise

        fp32 = cache_dir / f"{spec.name}-{key}.fp32.onnx"
        _export(replace(spec, precision="fp32"), fp32)
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        try:
            quantise(fp32, tmp, spec)
        finally:
            fp32.unlink(missing_ok=True)
        tmp.replace(target)  # atomic: concurrent workers never read half a file
        return target
    _export(spec, target)
    return target


def _export(spec: ModelSpec, target: Path) -> None:
    """torch -> ONNX of ``spec``'s network at ``target`` (written atomically)."""
    try:
        import torch
    except ImportError:
        raise RuntimeError(
            f"no ONNX export of {spec.name} in {target.parent}, and exporting one needs torch: "
            "install ris[worker], or copy the export there (RIS_MODEL_CACHE_DIR)"
        ) from None
    log.info("exporting %s to ONNX at %s (once)", spec.name, target)
    model = load_network(spec)
    dummy = torch.zeros(1, 3, spec.input_size, spec.input_size)
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's constant-folding notes are noise
        torch.onnx.export(
            model,
            (dummy,),
            str(tmp),
            input_names=["images"],
            output_names=["features"],
            dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}},
            opset_version=_OPSET,
            dynamo=False,
        )
    tmp.replace(target)  # atomic: concurrent workers never read half a file
