"""ResNet-50 for 14-label chest X-ray classification, from torchvision."""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from medbackdoor.models.info import ModelInfo
from medbackdoor.models.inputs import IMAGENET_INPUT, GrayToRGB, torchvision_weights
from medbackdoor.models.registry import MODELS


@MODELS.register("resnet50")
class ResNet50(nn.Module):
    """torchvision ResNet-50 (He et al. 2016) with a 14-logit head, taking gray images in [0, 1].

    ``features`` holds the stem and the four stages under torchvision's names (``features.layer1`` …
    ``features.layer4``); ``forward_features`` ends with stage 4's output (after its last block's ReLU) and
    ``forward_head`` pools it and applies ``fc``.

    Args:
        num_classes: outputs (logits).
        imagenet: start from torchvision's ImageNet weights (``IMAGENET1K_V2``; downloaded once by torchvision).
    """

    info = ModelInfo(
        layers={
            # stage 4's output, the final feature map (2,048 channels; 7×7 at 224 px, 2×2 at 64 px)
            "last": "features.layer4",
            # stage 3's output: 1,024 channels at 14×14 (224 px), the same depth and twice the resolution of the
            # last map, as the paper's DenseNet middle layer (its dense block 3's output) is
            "middle": "features.layer3",
            # fine-pruning prunes the channels of the final feature map, as on DenseNet-121
            "prune": "features.layer4",
        },
        min_size=32,  # a stride of 32 leaves a 1×1 map at 32 px
        input=IMAGENET_INPUT,
        norm="batch",
    )

    def __init__(self, num_classes: int = 14, imagenet: bool = False) -> None:
        super().__init__()
        weights = torchvision.models.ResNet50_Weights.IMAGENET1K_V2 if imagenet else None
        net = torchvision_weights(torchvision.models.resnet50, weights)
        self.input = GrayToRGB()
        self.features = nn.Sequential()
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            self.features.add_module(name, getattr(net, name))
        self.fc = nn.Linear(net.fc.in_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.input(x))

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        pooled = features.mean((2, 3))  # a mean, not AdaptiveAvgPool2d: deterministic on CUDA
        return pooled if pre_logits else self.fc(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
