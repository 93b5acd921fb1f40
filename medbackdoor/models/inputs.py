"""How gray or RGB images in [0, 1] become a network's input: the one module every RGB-trained architecture starts
with."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class GrayToRGB(nn.Module):
    """B×1×H×W gray in [0, 1] → B×3×H×W, replicated (B×3×H×W RGB passes as it is) and normalised with a
    per-channel mean and std (ImageNet's by default). The statistics are buffers that are not saved: the
    state-dict keys are the network's alone."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 channels: int = 3) -> None:
        super().__init__()
        mean, std = tuple(mean), tuple(std)
        if len(mean) == 1:
            mean, std = mean * channels, std * channels
        self.channels = channels
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, channels, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, channels, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.expand(-1, self.channels, -1, -1) - self.mean) / self.std


IMAGENET_INPUT = "gray replicated to 3 channels, normalised with the ImageNet mean and std"


def torchvision_weights(builder, weights, **kwargs) -> nn.Module:
    """``builder(weights=weights, **kwargs)``, with a failed download (no network, no cached file) as one line."""
    from medbackdoor.errors import UserError

    try:
        return builder(weights=weights, **kwargs)
    except Exception as exc:  # noqa: BLE001 - no network, no cached file
        raise UserError(f"cannot get torchvision's ImageNet weights ({weights}): {str(exc).splitlines()[0]}") from None


def check_input_channels(model: nn.Module, channels: int, arch: str = "the model") -> None:
    """Refuse, in one line, a model that cannot take ``channels``-channel images (an xrv network is 1-channel).

    A model whose input is a :class:`GrayToRGB` takes gray and RGB alike (gray is replicated, RGB passes); else
    its first convolution's input channels must equal ``channels``. A model with neither, and gray images, are not
    checked."""
    from medbackdoor.errors import UserError

    if channels == 1:  # gray: every model takes it (the models' contract is B×1×H×W)
        return
    for module in model.modules():
        if isinstance(module, GrayToRGB):
            if channels not in (1, module.channels):
                raise UserError(f"{arch} takes 1 or {module.channels} input channels; the dataset has {channels}")
            return
        if isinstance(module, nn.Conv2d):
            if module.in_channels != channels:
                what = "gray (1-channel)" if module.in_channels == 1 else f"{module.in_channels}-channel"
                raise UserError(f"{arch} takes {what} images; the dataset's images have {channels} channels "
                                f"(choose an architecture with an RGB input, e.g. densenet121)")
            return
