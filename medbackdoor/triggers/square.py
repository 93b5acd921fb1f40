"""The paper's trigger: a solid square of side ``size`` px and value ``value`` (0 = black)."""

from __future__ import annotations

import numpy as np

from medbackdoor.errors import UserError
from medbackdoor.triggers.base import Trigger

LOCATIONS = ("center", "random")


class SquareTrigger(Trigger):
    """A ``size``×``size`` square of constant ``value``.

    Args:
        size: side in pixels of the image the trigger is stamped on (≥ 1).
        value: intensity in [0, 1]; 0 is black, as in the paper. Three values (R, G, B) make a colour square, for
            colour images (``trigger.value=[1, 0, 0]``).
        location: ``center`` (top-left at ``((H − s) // 2, (W − s) // 2)``) or ``random`` (uniform over all
            positions fully inside the image, a new draw per image from the ``rng`` passed in).
    """

    def __init__(self, size: int = 3, value: float | list[float] = 0.0, location: str = "center") -> None:
        if int(size) != size or size < 1:
            raise UserError(f"trigger.size must be a whole number of pixels ≥ 1, got {size}")
        if isinstance(value, list | tuple):  # an RGB square for colour images
            if len(value) != 3 or not all(isinstance(v, int | float) and 0.0 <= v <= 1.0 for v in value):
                raise UserError(f"trigger.value must be in [0, 1] or three such values (R, G, B), got {value}")
            value = tuple(float(v) for v in value)
        elif not 0.0 <= value <= 1.0:
            raise UserError(f"trigger.value must be in [0, 1], got {value}")
        if location not in LOCATIONS:
            raise UserError(f"trigger.location must be one of {', '.join(LOCATIONS)}, got {location!r}")
        self.size, self.location = int(size), location
        self.value = value if isinstance(value, tuple) else float(value)

    def check_fits(self, height: int, width: int) -> None:
        if self.size > min(height, width):
            raise UserError(f"a {self.size}×{self.size} px trigger is larger than the {height}×{width} px image")

    def pattern(self, height: int, width: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        self.check_fits(height, width)
        s = self.size
        if self.location == "center":
            top, left = (height - s) // 2, (width - s) // 2
        else:
            top, left = int(rng.integers(0, height - s + 1)), int(rng.integers(0, width - s + 1))
        m = np.zeros((height, width), np.float32)
        m[top : top + s, left : left + s] = 1.0
        if isinstance(self.value, tuple):
            return m, np.asarray(self.value, np.float32)[:, None, None] * np.ones((1, height, width), np.float32)
        return m, np.full((height, width), self.value, np.float32)
