"""The model registry: each embedding model's name, output dimension, input size,
normalisation, pooling and precision, what both sides need (the store sizes its vectors by it
and records the model's name, so that vectors of two models never share a collection; workers
load, export and run the network: :mod:`ris.workers.networks`, :mod:`ris.workers.export`,
:mod:`ris.workers.quantise`, :mod:`ris.workers.embedder`).

Every model is a pretrained CNN cut before its classifier: the output is its last feature map
pooled (average, or GeM: the cube root of the mean cube, which weighs strong local features
up), L2-normalised, so inner product equals cosine similarity. ``-int8`` models are the same
network quantised to 8-bit integers for CPU workers (onnxruntime only): their vectors are
their own, not the fp32 model's. ``raw-pixels`` has no weights: the baseline that shows what
the CNNs add. benchmarks/eval_models.py measures the menu (docs/benchmarks.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class ModelSpec:
    """What a model needs: input size, normalisation, output dimension, and the network the
    workers load for it (``network``: a name in :mod:`ris.workers.networks`)."""

    name: str
    dim: int
    input_size: int
    mean: tuple[float, float, float]  # in 0..255 pixel units
    std: tuple[float, float, float]
    network: str
    pooling: Literal["avg", "gem"] = "avg"
    # int8: quantised after export (ris.workers.quantise); runs on onnxruntime's CPU provider.
    precision: Literal["fp32", "int8"] = "fp32"


Norm = tuple[float, float, float]
# TF-Lite EfficientNet-Lite models were trained on (x - 127) / 128.
_LITE: tuple[Norm, Norm] = ((127.0, 127.0, 127.0), (128.0, 128.0, 128.0))
_IMAGENET: tuple[Norm, Norm] = ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375))


def _spec(
    name: str,
    dim: int,
    input_size: int,
    norm: tuple[Norm, Norm],
    network: str | None = None,
    pooling: Literal["avg", "gem"] = "avg",
    precision: Literal["fp32", "int8"] = "fp32",
) -> ModelSpec:
    return ModelSpec(name, dim, input_size, *norm, network or name, pooling, precision)


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        _spec("efficientnet-lite0", 1280, 224, _LITE),
        # int8 only where it holds its fp32 model's quality (mAP@10 within 0.01 on both sets,
        # near-duplicate top-1 no lower): lite1's and lite2's int8 fell short
        # (docs/benchmarks.md).
        _spec("efficientnet-lite0-int8", 1280, 224, _LITE, "efficientnet-lite0", precision="int8"),
        _spec("efficientnet-lite1", 1280, 240, _LITE),
        _spec("efficientnet-lite2", 1280, 260, _LITE),
        # The quality variant: lite0 fed at 384 px (its paddings built for that size), GeM
        # pooled. 384 px by measurement: 320 and 352 px gained less on textiles
        # (docs/benchmarks.md).
        _spec("efficientnet-lite0-gem", 1280, 384, _LITE, "efficientnet-lite0", "gem"),
        _spec("efficientnet-lite0-gem-int8", 1280, 384, _LITE, "efficientnet-lite0", "gem", "int8"),
        _spec("resnet50", 2048, 224, _IMAGENET),
        _spec("raw-pixels", 768, 64, _LITE),
    )
}


def get_spec(name: str) -> ModelSpec:
    """The spec of model ``name``; a clear error for an unknown name."""
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}") from None
