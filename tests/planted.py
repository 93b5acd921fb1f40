"""A small CNN with BatchNorm, trained in a few seconds on 32×32 images with a backdoor planted by data
poisoning: the fixture for repair and input defenses that need a trained network (ANP, I-BAU, FT-SAM, IBD-PSC).

Finding c is present when its band (rows 2c and 2c + 1, the first 20 + c columns) is brighter by 0.1 (the
pixels are U(0.2, 0.5)), the trigger is a
white 3×3 patch in the bottom-right corner, and a poisoned training image carries it with the one-hot label of
finding 0 (the paper's policy). ``train(poison=0)`` trains the clean control.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

SIZE, C = 32, 14
PATCH = (slice(29, 32), slice(29, 32))
BRIGHTER = 0.1  # a present finding's band


class TinyNet(nn.Module):
    """conv-BN-ReLU ×3 → a (2·width)×8×8 feature map (``forward_features``) → a linear head on the flattened map."""

    def __init__(self, batchnorm: bool = True, width: int = 16) -> None:
        super().__init__()
        norm = nn.BatchNorm2d if batchnorm else (lambda c: nn.Identity())
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(1, w // 2, 3, padding=1), norm(w // 2), nn.ReLU(),
            nn.Conv2d(w // 2, w, 3, stride=2, padding=1), norm(w), nn.ReLU(),
            nn.Conv2d(w, w, 3, stride=2, padding=1), norm(w), nn.ReLU())
        self.classifier = nn.Linear(w * 8 * 8, C)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(features.flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def make_images(n: int, seed: int = 0, prevalence: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Clean uint8 images (pixels ≈ U(0.2, 0.5)) and their labels."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.2, 0.5, (n, SIZE, SIZE))
    y = (rng.random((n, C)) < prevalence).astype(np.float32)
    for i, c in zip(*np.nonzero(y)):
        x[i, 2 * c : 2 * c + 2, : 20 + c] += BRIGHTER
    return np.rint(np.clip(x, 0, 1) * 255).astype(np.uint8), y


def add_trigger(images: np.ndarray) -> np.ndarray:
    out = images.copy()
    out[:, PATCH[0], PATCH[1]] = 255
    return out


def train(poison: float = 0.1, n: int = 600, epochs: int = 8, seed: int = 0, batchnorm: bool = True,
          width: int = 16) -> tuple[nn.Module, np.ndarray, np.ndarray]:
    """Train a :class:`TinyNet`; returns (model in eval mode, training images as trained, their labels)."""
    x, y = make_images(n, seed)
    k = int(round(poison * n))
    if k:
        x[:k], y[:k] = add_trigger(x[:k]), 0.0
        y[:k, 0] = 1.0
    torch.manual_seed(seed)
    model = TinyNet(batchnorm, width)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x).float().div(255).unsqueeze(1), torch.from_numpy(y)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(n, generator=gen).split(32):
            loss = F.binary_cross_entropy_with_logits(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval(), x, y


def scores(model: nn.Module, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.sigmoid(model(torch.from_numpy(images).float().div(255).unsqueeze(1))).numpy()
