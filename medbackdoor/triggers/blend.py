"""Blended injection (Chen et al., 2017, "Targeted backdoor attacks on deep learning systems using data
poisoning"): a full-image pattern mixed in with a constant weight."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from medbackdoor.errors import UserError
from medbackdoor.triggers.base import Trigger, check_pattern_channels


def load_gray(path: str) -> np.ndarray:
    """An image file as a 2-D float32 array in [0, 1] (converted to gray); a :class:`UserError` naming the file."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("L"), np.float32) / 255.0
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read trigger image {path}: {e}") from None


def load_rgb(path: str) -> np.ndarray:
    """An image file as a 3×H×W float32 array in [0, 1] (converted to RGB); a :class:`UserError` naming the file."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), np.float32).transpose(2, 0, 1) / 255.0
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read trigger image {path}: {e}") from None


def resize_gray(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """A 2-D float array (or C×H×W, each channel alike) resized to ``height``×``width`` (bicubic, clipped to
    [0, 1]), float32."""
    if image.ndim == 3:
        return np.stack([resize_gray(channel, height, width) for channel in image])
    if image.shape == (height, width):
        return image.astype(np.float32)
    out = Image.fromarray(image.astype(np.float32)).resize((width, height), Image.Resampling.BICUBIC)
    return np.clip(np.asarray(out, np.float32), 0.0, 1.0)


class BlendTrigger(Trigger):
    """Eq. 1 with a constant mask: ``x' = (1 − α) x + α r`` over the whole image.

    Args:
        alpha: blend weight α in [0, 1] (Chen et al. use 0.05–0.2).
        image: a picture file used as ``r`` (converted to gray, resized to each image's size); ``None`` for
            uniform noise in [0, 1] drawn from ``seed`` at the image's own size (the same for every image of
            that size).
        seed: seeds the noise pattern.
        channels: 1 (one gray pattern for every channel) or 3 (an RGB pattern for colour images: noise drawn per
            channel, or the picture in colour).
    """

    def __init__(self, alpha: float = 0.1, image: str | None = None, seed: int = 0, channels: int = 1) -> None:
        if not (math.isfinite(alpha) and 0.0 <= alpha <= 1.0):
            raise UserError(f"trigger alpha must be in [0, 1], got {alpha}")
        self.alpha, self.image, self.seed = float(alpha), image, int(seed)
        self.channels = check_pattern_channels(channels)
        self._source = None if image is None else (load_gray(image) if self.channels == 1 else load_rgb(image))
        self._cache: dict[tuple[int, int], np.ndarray] = {}

    def blend_pattern(self, height: int, width: int) -> np.ndarray:
        """The pattern ``r`` at ``height``×``width`` (3×H×W for ``channels`` 3): float32 in [0, 1], identical on
        every call."""
        if (height, width) not in self._cache:
            if len(self._cache) >= 8:
                self._cache.clear()
            if self._source is None:
                shape = (height, width) if self.channels == 1 else (self.channels, height, width)
                r = np.random.default_rng(self.seed).random(shape, np.float32)
            else:
                r = resize_gray(self._source, height, width)
            self._cache[height, width] = r
        return self._cache[height, width]

    def pattern(self, height: int, width: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return np.full((height, width), self.alpha, np.float32), self.blend_pattern(height, width)
