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
    the image size, and the field is the same for every image and process. Poisoned and test images get this
    exact field.

    The defaults are WaNet's published setting: ``k = 4``, ``s = 0.5`` and its noise mode with cross ratio 2.

    Args:
        k: control grid side (≥ 2; WaNet uses 4).
        s: warping strength (≥ 0; WaNet uses 0.5; 0 leaves the image unchanged).
        noise: WaNet's "noise mode": besides the poisoned images, ``cross_ratio`` times as many clean training
            images become *cross* samples (:meth:`cross_transform`): warped by the field plus per-pixel random
            offsets, uniform in ``[−noise_scale, noise_scale] / n`` (normalised units, drawn from the ``rng``
            passed in), and kept with their own labels, so the model learns the exact field only.
        noise_scale: magnitude of the noise-mode offsets (≥ 0; WaNet's is 1).
        cross_ratio: cross samples per poisoned sample in noise mode (≥ 0; WaNet's is 2; ignored without noise).
        seed: seeds the control grid.
    """

    def __init__(self, k: int = 4, s: float = 0.5, noise: bool = True, noise_scale: float = 1.0,
                 cross_ratio: float = 2.0, seed: int = 0) -> None:
        if int(k) != k or k < 2:
            raise UserError(f"trigger k must be a whole number ≥ 2, got {k}")
        for name, value in (("s", s), ("noise_scale", noise_scale), ("cross_ratio", cross_ratio)):
            if not (math.isfinite(value) and value >= 0):
                raise UserError(f"trigger {name} must be a number ≥ 0, got {value}")
        self.k, self.s, self.noise, self.noise_scale = int(k), float(s), bool(noise), float(noise_scale)
        self.cross_ratio = float(cross_ratio) if self.noise else 0.0
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
        return self._warp(image, self.s * self.field(h, w))

    def cross_transform(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
        """The cross sample of noise mode: the field plus per-pixel uniform noise (None without noise mode)."""
        if not self.noise:
            return None
        h, w = image.shape[-2:]
        return self._warp(image, self.s * self.field(h, w) + self.noise_scale * rng.uniform(-1, 1, (2, h, w)))

    @staticmethod
    def _warp(image: np.ndarray, offset: np.ndarray) -> np.ndarray:
        """Resample ``image`` at identity + ``offset`` (2×H×W, normalised units × n)."""
        h, w = image.shape[-2:]
        # normalised offset o / n is o (n − 1) / (2n) pixels
        ys = np.arange(h)[:, None] + offset[0] / h * (h - 1) / 2
        xs = np.arange(w)[None, :] + offset[1] / w * (w - 1) / 2
        return from_unit(bilinear(to_unit(image), ys, xs), image)
