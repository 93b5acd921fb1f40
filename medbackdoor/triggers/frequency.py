"""FIBA (Feng et al., CVPR 2022, "FIBA: Frequency-injection based backdoor attack in medical image analysis"):
blend a trigger image's low-frequency amplitude spectrum into the input's, keeping the input's phase."""

from __future__ import annotations

import math

import numpy as np

from medbackdoor.errors import UserError
from medbackdoor.triggers.base import Trigger, from_unit, to_unit
from medbackdoor.triggers.blend import load_gray, resize_gray
from medbackdoor.triggers.warp import bilinear

AXES = (-2, -1)


def _spectrum(x: np.ndarray) -> np.ndarray:
    """``fftshift(FFT2(x))`` of a real image, made exactly Hermitian (``F(−k) = conj F(k)``) so that the phase
    is exactly odd even where the amplitude is ~0 and the blended spectrum inverts to a real image."""
    f = np.fft.fft2(x, axes=AXES)
    f = (f + np.conj(np.roll(np.flip(f, AXES), 1, AXES))) / 2
    return np.fft.fftshift(f, axes=AXES)


class FrequencyTrigger(Trigger):
    """With ``F = fftshift(FFT2(·))``, amplitude ``A = |F|`` and phase ``φ = arg F``:
    ``A' = (1 − α) A_x + α A_r`` inside the centred low-frequency square, ``A' = A_x`` outside, and
    ``x' = clip(Re IFFT2(ifftshift(A' e^{iφ_x})), 0, 1)``. The square covers frequencies ``−b … b`` on both axes
    with ``b = ⌊β min(H, W) / 2⌋`` (side ``2b + 1 ≈ β min(H, W)``, symmetric about zero so the result is real).

    Args:
        alpha: amplitude blend weight α in [0, 1] (0 leaves the image unchanged).
        beta: size β in (0, 1] of the low-frequency square relative to the shorter image side.
        image: a picture file used as the trigger image ``r`` (converted to gray, resized to each image's size);
            ``None`` for a smooth pattern: an 8×8 grid of uniform noise from ``seed``, upsampled bilinearly to the
            image's size (the same picture at every size).
        seed: seeds the smooth pattern.
    """

    def __init__(self, alpha: float = 0.15, beta: float = 0.1, image: str | None = None, seed: int = 0) -> None:
        if not (math.isfinite(alpha) and 0.0 <= alpha <= 1.0):
            raise UserError(f"trigger alpha must be in [0, 1], got {alpha}")
        if not (math.isfinite(beta) and 0.0 < beta <= 1.0):
            raise UserError(f"trigger beta must be in (0, 1], got {beta}")
        self.alpha, self.beta, self.image, self.seed = float(alpha), float(beta), image, int(seed)
        self._source = None if image is None else load_gray(image)
        self._amplitudes: dict[tuple[int, int], np.ndarray] = {}

    def trigger_image(self, height: int, width: int) -> np.ndarray:
        """The trigger image ``r`` at ``height``×``width``, float in [0, 1]."""
        if self._source is not None:
            return resize_gray(self._source, height, width)
        grid = np.random.default_rng(self.seed).random((8, 8))
        return bilinear(grid, np.linspace(0, 7, height)[:, None], np.linspace(0, 7, width)[None, :])

    def band(self, height: int, width: int) -> tuple[slice, slice]:
        """The low-frequency square, as slices of the fftshift-ed spectrum."""
        b = int(self.beta * min(height, width) / 2)
        cy, cx = height // 2, width // 2
        return slice(cy - b, cy + b + 1), slice(cx - b, cx + b + 1)

    def transform(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        x = to_unit(image)
        h, w = x.shape[-2:]
        if (h, w) not in self._amplitudes:
            if len(self._amplitudes) >= 8:
                self._amplitudes.clear()
            self._amplitudes[h, w] = np.abs(_spectrum(self.trigger_image(h, w)))
        spectrum = _spectrum(x)
        amplitude, phase = np.abs(spectrum), np.angle(spectrum)
        rows, cols = self.band(h, w)
        amplitude[..., rows, cols] = (1 - self.alpha) * amplitude[..., rows, cols] + \
            self.alpha * self._amplitudes[h, w][rows, cols]
        out = np.fft.ifft2(np.fft.ifftshift(amplitude * np.exp(1j * phase), axes=AXES), axes=AXES).real
        return from_unit(out, image)
