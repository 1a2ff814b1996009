"""The embedder: uint8 image batches in, L2-normalised vectors out, on onnxruntime (the
cached ONNX export) or torch, on the CPU or CUDA."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

import numpy as np

from ris.common.images import normalise
from ris.common.models import get_spec
from ris.common.settings import Settings
from ris.workers.export import export_onnx
from ris.workers.networks import load_network

# onnxruntime 1.29+ uploads usage and error events from Linux by default; an indexing service
# offline or on private images should not (set ORT_DISABLE_TELEMETRY=0 to allow it).
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


class Embedder:
    """Turns uint8 image batches into L2-normalised vectors.

    Loaded once per worker process, and called from one thread only (the process's
    :class:`ris.workers.inference.InferenceEngine`): torch on CUDA pays cuDNN's per-thread set-up
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
        model = load_network(self.spec).to(device=device, dtype=dtype)
        if cuda:
            # uint8 NHWC images permuted to NCHW are channels-last already: no copy, and the
            # layout cuDNN's tensor-core convolutions prefer.
            model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
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
