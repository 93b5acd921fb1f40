"""WaNet (Nguyen & Tran, ICLR 2021, "WaNet – Imperceptible warping-based backdoor attack"): a fixed, smooth
warping field applied to every infected image."""

from __future__ import annotations

import math

import numpy as np

from medbackdoor.errors import UserError
from medbackdoor.triggers.base import Trigger, from_unit, to_unit


def bilinear(image: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Sample ``image[..., ys, xs]`` at fractional pixel coordinates (bilinear; coordinates clamped to the image)."""
    h, w = image.shape[-2:]
    ys, xs = np.clip(ys, 0, h - 1), np.clip(xs, 0, w - 1)
    y0 = np.minimum(np.floor(ys), max(h - 2, 0)).astype(np.intp)
    x0 = np.minimum(np.floor(xs), max(w - 2, 0)).astype(np.intp)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy, fx = ys - y0, xs - x0
    top = image[..., y0, x0] * (1 - fx) + image[..., y0, x1] * fx
    bottom = image[..., y1, x0] * (1 - fx) + image[..., y1, x1] * fx
    return top * (1 - fy) + bottom * fy


class WarpTrigger(Trigger):
    """Resample the image on a warped grid. With normalised coordinates in [−1, 1] (as ``grid_sample`` with
    ``align_corners=True``), the grid is ``clip(identity + s · field / n, −1, 1)`` per axis of ``n`` pixels, where
    ``field`` is a ``k``×``k`` control grid of uniform offsets in [−1, 1] (from ``seed``), divided by its mean
    absolute value and upsampled bilinearly to H×W. The mean displacement is thus about ``s / 2`` px whatever
    the image size, and the field is the same for every image and process.

    Args:
        k: control grid side (≥ 2; WaNet uses 4).
        s: warping strength (≥ 0; WaNet uses 0.5; 0 leaves the image unchanged).
        noise: WaNet's "noise mode": add per-image random offsets, uniform in ``[−noise_scale, noise_scale] / n``
            (normalised units) at every pixel, drawn from the ``rng`` passed in. In WaNet these noisy warps are
            kept with their clean labels so the model learns the exact field.
        noise_scale: magnitude of the noise-mode offsets (≥ 0; WaNet's is 1).
        seed: seeds the control grid.
    """

    def __init__(self, k: int = 4, s: float = 0.5, noise: bool = False, noise_scale: float = 1.0,
                 seed: int = 0) -> None:
        if int(k) != k or k < 2:
            raise UserError(f"trigger k must be a whole number ≥ 2, got {k}")
        if not (math.isfinite(s) and s >= 0):
            raise UserError(f"trigger s must be a number ≥ 0, got {s}")
        if not (math.isfinite(noise_scale) and noise_scale >= 0):
            raise UserError(f"trigger noise_scale must be a number ≥ 0, got {noise_scale}")
        self.k, self.s, self.noise, self.noise_scale = int(k), float(s), bool(noise), float(noise_scale)
        self.seed = int(seed)
        self._fields: dict[tuple[int, int], np.ndarray] = {}

    def field(self, height: int, width: int) -> np.ndarray:
        """The 2×H×W upsampled control field (y then x offsets, mean |offset| of the control grid = 1)."""
        if (height, width) not in self._fields:
            if len(self._fields) >= 8:
                self._fields.clear()
            grid = np.random.default_rng(self.seed).uniform(-1, 1, (2, self.k, self.k))
            grid /= np.abs(grid).mean()
            ys = np.linspace(0, self.k - 1, height)[:, None] * np.ones((1, width))
            xs = np.linspace(0, self.k - 1, width)[None, :] * np.ones((height, 1))
            self._fields[height, width] = bilinear(grid, ys, xs)
        return self._fields[height, width]

    def transform(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        h, w = image.shape[-2:]
        offset = self.s * self.field(h, w)
        if self.noise:
            offset = offset + self.noise_scale * rng.uniform(-1, 1, (2, h, w))
        # normalised offset o / n is o (n − 1) / (2n) pixels
        ys = np.arange(h)[:, None] + offset[0] / h * (h - 1) / 2
        xs = np.arange(w)[None, :] + offset[1] / w * (w - 1) / 2
        return from_unit(bilinear(to_unit(image), ys, xs), image)
