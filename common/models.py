"""The model registry: each embedding model's name, output dimension, input size and
normalisation, what both sides need (the store sizes its vectors by it; workers load, export
and run the network: :mod:`ris.workers.networks`, :mod:`ris.workers.export`,
:mod:`ris.workers.embedder`).

Every model is a pretrained CNN cut before its classifier: the output is the globally
average-pooled feature map, L2-normalised, so inner product equals cosine similarity. One
more, ``raw-pixels``, has no weights: the baseline that shows what the CNNs add.
"""

from __future__ import annotations

from dataclasses import dataclass


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


Norm = tuple[float, float, float]
# TF-Lite EfficientNet-Lite models were trained on (x - 127) / 128.
_LITE: tuple[Norm, Norm] = ((127.0, 127.0, 127.0), (128.0, 128.0, 128.0))
_IMAGENET: tuple[Norm, Norm] = ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375))


def _spec(name: str, dim: int, input_size: int, norm: tuple[Norm, Norm]) -> ModelSpec:
    return ModelSpec(name, dim, input_size, *norm, network=name)


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        _spec("efficientnet-lite0", 1280, 224, _LITE),
        _spec("efficientnet-lite1", 1280, 240, _LITE),
        _spec("efficientnet-lite2", 1280, 260, _LITE),
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
