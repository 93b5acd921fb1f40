"""How gray images in [0, 1] become a network's input: the one module every RGB-trained architecture starts with."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class GrayToRGB(nn.Module):
    """B×1×H×W gray in [0, 1] → B×3×H×W, replicated and normalised with a per-channel mean and std (ImageNet's by
    default). The statistics are buffers that are not saved: the state-dict keys are the network's alone."""

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
