"""SIG (Barni et al., 2019, "A new backdoor attack in CNNs by training set corruption without label poisoning"):
an additive horizontal sinusoid."""

from __future__ import annotations

import math

import numpy as np

from medbackdoor.errors import UserError
from medbackdoor.triggers.base import Trigger, from_unit, to_unit


class SigTrigger(Trigger):
    """Add a sinusoid along the columns: ``x'[i, j] = clip(x[i, j] + Δ sin(2π j f / W), 0, 1)`` for column ``j``
    of an image ``W`` px wide (values in [0, 1] units; uint8 images are scaled, rounded and clipped back).

    Args:
        delta: amplitude Δ in (0, 1] (Barni et al. use 20/255 for training).
        frequency: number of periods ``f`` across the image width (> 0; Barni et al. use 6).
    """

    def __init__(self, delta: float = 20 / 255, frequency: float = 6) -> None:
        if not (math.isfinite(delta) and 0.0 < delta <= 1.0):
            raise UserError(f"trigger delta must be in (0, 1], got {delta}")
        if not (math.isfinite(frequency) and frequency > 0):
            raise UserError(f"trigger frequency must be a number > 0, got {frequency}")
        self.delta, self.frequency = float(delta), float(frequency)

    def signal(self, width: int) -> np.ndarray:
        """The added row ``Δ sin(2π j f / W)`` for ``j = 0 … W − 1`` (float64)."""
        return self.delta * np.sin(2 * np.pi * np.arange(width) * self.frequency / width)

    def transform(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return from_unit(to_unit(image) + self.signal(image.shape[-1]), image)
