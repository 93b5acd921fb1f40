"""BadNets (Gu et al., 2017, "BadNets: Identifying vulnerabilities in the machine learning model supply chain"):
a small binary patch stamped with Eq. 1."""

from __future__ import annotations

import numpy as np

from medbackdoor.errors import UserError
from medbackdoor.triggers.base import Trigger, check_pattern_channels

PATTERNS = ("checkerboard", "noise")
LOCATIONS = ("corner", "center", "random")


class PatchTrigger(Trigger):
    """A ``size``×``size`` black-and-white pattern ``r`` under a binary mask ``m``: ``x' = x ⊙ (1 − m) + r ⊙ m``.

    Args:
        size: side in pixels of the image the trigger is stamped on (≥ 1).
        pattern: ``checkerboard`` (``r[i, j] = 1`` where ``i + j`` is even, so the patch's top-left pixel is white)
            or ``noise`` (binary noise drawn from ``seed``: the same patch on every image).
        location: ``corner`` (bottom-right, 1 px from both edges, as in BadNets), ``center`` (top-left at
            ``((H − s) // 2, (W − s) // 2)``) or ``random`` (uniform over all positions fully inside the image, a
            new draw per image from the ``rng`` passed in).
        seed: seeds the ``noise`` pattern (unused for ``checkerboard``).
        channels: 1 (the pattern is the same on every channel: black and white) or 3 (a colour patch for RGB
            images: ``noise`` draws each channel's bits apart, 8 colours; ``checkerboard`` alternates two
            complementary colours drawn from ``seed``).
    """

    def __init__(self, size: int = 3, pattern: str = "checkerboard", location: str = "corner", seed: int = 0,
                 channels: int = 1) -> None:
        if int(size) != size or size < 1:
            raise UserError(f"trigger.size must be a whole number of pixels ≥ 1, got {size}")
        if pattern not in PATTERNS:
            raise UserError(f"trigger pattern must be one of {', '.join(PATTERNS)}, got {pattern!r}")
        if location not in LOCATIONS:
            raise UserError(f"trigger.location must be one of {', '.join(LOCATIONS)}, got {location!r}")
        self.size, self.location, self.seed = int(size), location, int(seed)
        self.channels = check_pattern_channels(channels)
        self._fill = pattern  # not ``self.pattern``: that would hide the method

    def __repr__(self) -> str:
        return (f"PatchTrigger(channels={self.channels!r}, location={self.location!r}, pattern={self._fill!r}, "
                f"seed={self.seed!r}, size={self.size!r})")

    def patch(self) -> np.ndarray:
        """The pattern, values 0 or 1 (float32): ``size``×``size``, or 3×``size``×``size`` for ``channels`` 3."""
        s = self.size
        if self._fill == "noise":
            shape = (s, s) if self.channels == 1 else (self.channels, s, s)
            return np.random.default_rng(self.seed).integers(0, 2, shape).astype(np.float32)
        board = (np.add.outer(np.arange(s), np.arange(s)) % 2 == 0).astype(np.float32)
        if self.channels == 1:
            return board
        colour = np.random.default_rng(self.seed).integers(0, 2, self.channels).astype(np.float32)
        if colour.min() == colour.max():  # black/white: make it a colour
            colour[0] = 1.0 - colour[0]
        colour = colour[:, None, None]
        return board[None] * colour + (1.0 - board[None]) * (1.0 - colour)

    def check_fits(self, height: int, width: int) -> None:
        margin = 1 if self.location == "corner" else 0
        if self.size + margin > min(height, width):
            where = " with its 1 px margin" if margin else ""
            raise UserError(f"a {self.size}×{self.size} px trigger{where} is larger than the {height}×{width} px image")

    def pattern(self, height: int, width: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        self.check_fits(height, width)
        s = self.size
        if self.location == "corner":
            top, left = height - s - 1, width - s - 1
        elif self.location == "center":
            top, left = (height - s) // 2, (width - s) // 2
        else:
            top, left = int(rng.integers(0, height - s + 1)), int(rng.integers(0, width - s + 1))
        m = np.zeros((height, width), np.float32)
        r = np.zeros((height, width) if self.channels == 1 else (self.channels, height, width), np.float32)
        m[top : top + s, left : left + s] = 1.0
        r[..., top : top + s, left : left + s] = self.patch()
        return m, r
