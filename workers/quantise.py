"""int8 models: an fp32 ONNX export quantised by onnxruntime's static quantisation.

The recipe, chosen by measurement (docs/benchmarks.md; the sweep of calibration methods,
images and options that chose it is summarised there): QDQ format, per-channel int8 weights
with ``reduce_range`` (7-bit: no int16 saturation on CPUs without VNNI, onnxruntime issue
12072, so every worker of a fleet computes the same vectors), uint8 activations with
asymmetric ranges, Percentile 99.99 calibration, every node quantised.

Calibration uses 256 augmented views of images that ship with scikit-image and that no
evaluation indexes or queries (the five images below, the 200 faces of ``lfw_subset`` and 40
seeded ``binary_blobs``), so a quality figure is never measured on what calibrated it. The
result is deterministic for a given onnxruntime: a fixed seed draws the views.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from ris.common.images import normalise, open_rgb, preprocess
from ris.common.models import ModelSpec

log = logging.getLogger(__name__)

# Bump when the recipe or the calibration set changes, so that cached int8 exports are rebuilt.
RECIPE_VERSION = 1
CALIBRATION_IMAGES = 256
_SEED = 0
_SK_IMAGES = ("chessboard_RGB.png", "logo.png", "microaneurysms.png", "motorcycle_right.png",
              "phantom.png")  # fmt: skip


def quantise(fp32: Path, target: Path, spec: ModelSpec) -> None:
    """Write the int8 model of the fp32 export ``fp32`` to ``target`` (a few minutes of
    calibration on two cores; done once, then cached)."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    log.info("quantising %s to int8 (once): calibrating on %d images", spec.name,
             CALIBRATION_IMAGES)  # fmt: skip
    pre = target.with_suffix(".pre.onnx")
    quant_pre_process(str(fp32), str(pre))
    try:
        quantize_static(
            str(pre),
            str(target),
            calibration_data_reader=_Reader(calibration_pixels(spec.input_size), spec),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.Percentile,
            extra_options={
                "ActivationSymmetric": False,
                "CalibPercentile": 99.99,
                "CalibTensorRangeSymmetric": False,
                # Histograms collected 16 images at a time: bounded memory.
                "CalibStridedMinMax": 16,
            },
        )
    finally:
        pre.unlink(missing_ok=True)


class _Reader:
    """onnxruntime's CalibrationDataReader over the calibration images, 8 at a time (with
    ``set_range``, which strided calibration asks for)."""

    def __init__(self, pixels: np.ndarray, spec: ModelSpec, batch: int = 8) -> None:
        self.pixels, self.spec, self.batch = pixels, spec, batch
        self.set_range(0, len(pixels))

    def __len__(self) -> int:
        return len(self.pixels)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._starts = iter(range(start_index, end_index, self.batch))
        self._end = end_index

    def get_next(self) -> dict[str, np.ndarray] | None:
        start = next(self._starts, None)
        if start is None:
            return None
        batch = np.ascontiguousarray(self.pixels[start : min(start + self.batch, self._end)])
        return {"images": normalise(batch, self.spec.mean, self.spec.std)}

    def rewind(self) -> None:
        self.set_range(0, len(self.pixels))


def calibration_pixels(size: int, n: int = CALIBRATION_IMAGES) -> np.ndarray:
    """``n`` calibration images as the model sees them (uint8, ``size`` square), drawn
    round-robin from :func:`calibration_sources`, each a random view (:func:`_augment`)."""
    rng = np.random.default_rng(_SEED)
    sources = calibration_sources()
    order = rng.permutation(len(sources))
    views = [_augment(sources[order[i % len(sources)]], rng) for i in range(n)]
    return np.stack([preprocess(view, size) for view in views])


def calibration_sources() -> list[Image.Image]:
    """The scikit-image images no evaluation uses in any form: five PNGs, the 200 faces of
    ``lfw_subset`` and 40 seeded ``binary_blobs``."""
    try:
        import skimage
        import skimage.data as data
    except ImportError:
        raise RuntimeError(
            "an int8 model is calibrated on scikit-image's images once, when it is first "
            "exported: pip install scikit-image, or copy the export into RIS_MODEL_CACHE_DIR"
        ) from None
    base = Path(skimage.__file__).parent / "data"
    out = [open_rgb((base / name).read_bytes(), 100_000_000) for name in _SK_IMAGES]
    faces = (data.lfw_subset() * 255).round().astype(np.uint8)
    out += [Image.fromarray(face).convert("RGB") for face in faces]
    for s in range(40):
        blob = data.binary_blobs(
            256, blob_size_fraction=0.05 + 0.01 * (s % 10), volume_fraction=0.3 + 0.01 * s, rng=s
        )
        out.append(Image.fromarray((blob * 255).astype(np.uint8)).convert("RGB"))
    return out


def _augment(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A random view: crop, flip, rotation, colour, grey, blur, low resolution, JPEG, invert
    (the kinds of images an index holds, from a few sources)."""
    w, h = img.size
    scale, ratio = rng.uniform(0.3, 1.0), np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    cw = min(w, max(8, round(np.sqrt(scale * w * h * ratio))))
    ch = min(h, max(8, round(np.sqrt(scale * w * h / ratio))))
    x0, y0 = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
    img = img.crop((x0, y0, x0 + cw, y0 + ch))
    if rng.random() < 0.5:
        img = ImageOps.mirror(img)
    if rng.random() < 0.25:
        img = img.rotate(rng.uniform(-25, 25), expand=True, fillcolor=(255, 255, 255))
    if rng.random() < 0.6:
        img = ImageEnhance.Color(img).enhance(rng.uniform(0.3, 1.6))
        img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.6, 1.4))
        img = ImageEnhance.Contrast(img).enhance(rng.uniform(0.6, 1.4))
    if rng.random() < 0.25:
        img = img.convert("L").convert("RGB")
    if rng.random() < 0.2:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 3.0)))
    if rng.random() < 0.2:  # a tiny source upscaled by the decoder, like Fashion-MNIST's 28 px
        side = int(rng.integers(24, 72))
        img = img.resize((side, max(1, round(side * img.height / img.width))))
    if rng.random() < 0.3:
        buffer = io.BytesIO()
        img.save(buffer, "JPEG", quality=int(rng.integers(10, 90)))
        img = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    if rng.random() < 0.1:
        img = ImageOps.invert(img)
    return img
