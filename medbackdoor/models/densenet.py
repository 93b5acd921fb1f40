"""DenseNet-121 for 14-label chest X-ray classification (CheXNet), from torchvision."""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from medbackdoor.models.info import ModelInfo
from medbackdoor.models.inputs import IMAGENET_INPUT, GrayToRGB, torchvision_weights
from medbackdoor.models.registry import MODELS


@MODELS.register("densenet121")
class DenseNet121(nn.Module):
    """torchvision DenseNet-121 with a 14-logit head, taking gray images in [0, 1].

    Split as ``forward_features`` (up to the final feature map, after its ReLU) and ``forward_head`` (pool and
    linear). torchvision applies that last ReLU in place inside ``forward``; here it is an explicit,
    non-in-place module ``relu`` so hooks on it see its true output (the Keras layer ``relu``).
    Middle layer for Grad-CAM: ``features.transition3.relu`` (14×14 at 224 px).

    Args:
        num_classes: outputs (logits; apply a sigmoid for probabilities).
        imagenet: start from torchvision's ImageNet weights (downloaded once by torchvision).
    """

    info = ModelInfo(
        layers={
            # the final feature map after its ReLU (Keras DenseNet121 layer "relu"); 7×7 at 224 px
            "last": "relu",
            # the ReLU inside the third transition block, i.e. the output of dense block 3 after BN and ReLU (Keras
            # "pool4_relu", the layer the paper's code hooks); 14×14 at 224 px. The paper calls it "layer 207" by
            # counting Keras layers and chose it because its feature maps have the same depth as the last layer's
            # (1,024 channels); they are twice as large spatially.
            "middle": "features.transition3.relu",
            # fine-pruning's layer: the channels of the final feature map (norm5 after its ReLU)
            "prune": "relu",
        },
        min_size=32,  # five halvings leave a 1×1 map at 32 px
        input=IMAGENET_INPUT,
        norm="batch",
    )

    def __init__(self, num_classes: int = 14, imagenet: bool = False) -> None:
        super().__init__()
        weights = torchvision.models.DenseNet121_Weights.IMAGENET1K_V1 if imagenet else None
        net = torchvision_weights(torchvision.models.densenet121, weights)
        self.input = GrayToRGB()
        self.features = net.features
        self.relu = nn.ReLU(inplace=False)
        self.classifier = nn.Linear(net.classifier.in_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.features(self.input(x)))

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        # Global average pooling as a mean: AdaptiveAvgPool2d's CUDA backward has no deterministic kernel.
        pooled = features.mean((2, 3))
        return pooled if pre_logits else self.classifier(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
