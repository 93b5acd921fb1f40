"""The trigger primitive ``p(x, r, m) = x ⊙ (1 − m) + r ⊙ m`` and the base class every trigger extends."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from medbackdoor.errors import UserError


def apply_trigger(x, r, m):
    """Stamp a trigger: ``x' = x ⊙ (1 − m) + r ⊙ m`` (the paper's Eq. 1), returning a new array.

    Args:
        x: image(s), a NumPy array or torch tensor; never modified.
        r: the trigger pattern, in the same value range as ``x``; broadcast against it.
        m: the mask, 1 where the trigger is, 0 elsewhere (fractions blend); broadcast against ``x``.

    Returns:
        The infected image, same type and dtype as ``x``. Integer images are rounded and clipped to the
        dtype's range, so a binary mask gives exact pixels.
    """
    if hasattr(x, "detach"):  # torch tensor
        out = x.float() * (1 - m) + r * m
        if not x.dtype.is_floating_point:
            info = __import__("torch").iinfo(x.dtype)
            out = out.round().clamp(info.min, info.max)
        return out.to(x.dtype)
    x = np.asarray(x)
    out = x.astype(np.float64) * (1 - m) + np.asarray(r, np.float64) * m
    if np.issubdtype(x.dtype, np.integer):
        info = np.iinfo(x.dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    return out.astype(x.dtype)


def image_rng(seed: int, stream: int, index: int) -> np.random.Generator:
    """The generator for one image's random choices: independent of order, batch and worker."""
    return np.random.default_rng([int(seed), int(stream), int(index)])


class Trigger(ABC):
    """A trigger is a mask ``m`` and a pattern ``r`` in [0, 1] for an image of a given size.

    Subclasses override one method, :meth:`pattern`. Calling a trigger stamps it on an H×W image (uint8 in
    0..255 or float in 0..1) with :func:`apply_trigger`; ``rng`` drives any random placement, so pass
    :func:`image_rng` to make the draw depend only on (seed, image).
    """

    @abstractmethod
    def pattern(self, height: int, width: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(m, r)``: H×W float32 arrays, the mask and the pattern (values in [0, 1])."""

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        image = np.asarray(image)
        m, r = self.pattern(*image.shape[-2:], rng)
        scale = 255.0 if image.dtype == np.uint8 else 1.0
        return apply_trigger(image, r * scale, m)

    def box(self, height: int, width: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """The trigger's bounding box ``(top, left, bottom, right)`` (exclusive) for the same ``rng`` draw."""
        m, _ = self.pattern(height, width, rng)
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        if not len(rows):
            return (0, 0, 0, 0)
        return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1

    def check_fits(self, height: int, width: int) -> None:
        """Raise :class:`UserError` if the trigger cannot be placed on an image of this size."""
        if min(height, width) < 1:
            raise UserError(f"cannot place a trigger on a {height}×{width} image")
