"""Adaptive attacks: triggers built to get past defenses that look for a separate cluster of poisoned samples.

* ``adaptive-blend`` and ``adaptive-patch`` (Qi, Xie, Li, Mahloujifar, Mittal, "Revisiting the assumption of latent
  separability for backdoor defenses", ICLR 2023): each poisoned *training* image shows only part of the trigger
  (some pieces of a blended pattern, some of several patches, at a lower opacity), while every test image gets all
  of it; and *cover* samples, clean images with the same partial trigger and their own labels, teach the model
  that a partial trigger alone is not the backdoor. Poisoned and clean samples then stay close in the model's
  latent space, which is what spectral signatures, SPECTRE and activation clustering rely on.
* ``conditional``: a source-specific backdoor (TaCT, Tang et al., USENIX Security 2021, "Demon in the variant"),
  made multi-label: only images positive for a *source* finding are poisoned, and cover samples, source-negative
  images carrying the same trigger with their own labels, teach the model to ignore the trigger elsewhere. A run
  reports ASR on the triggered source-positive test images and ``asr_off`` on the triggered source-negative ones.

Each is a :class:`~medbackdoor.triggers.Trigger` with :meth:`poison_transform` (the partial trigger of poisoned
training images), :attr:`cross_ratio` and :meth:`cross_transform` (the cover samples), and for ``conditional``
:meth:`condition` and :meth:`cross_candidates`; the poisoning wrapper does the rest.
"""

from __future__ import annotations

import math

import numpy as np

from medbackdoor.errors import UserError
from medbackdoor.triggers.base import TRIGGERS, Trigger, apply_trigger
from medbackdoor.triggers.blend import BlendTrigger


def _check_unit(name: str, value: float) -> float:
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise UserError(f"trigger {name} must be in [0, 1], got {value}")
    return float(value)


def _check_ratio(value: float) -> float:
    if not (math.isfinite(value) and value >= 0.0):
        raise UserError(f"trigger cover_ratio must be a number ≥ 0, got {value}")
    return float(value)


class _Covered(Trigger):
    """A trigger with ``cover_ratio`` cover samples per poisoned one: clean images with the partial trigger of
    :meth:`poison_transform`, their labels kept (Qi et al.'s regularisation samples)."""

    cover_ratio: float = 0.0

    @property
    def cross_ratio(self) -> float:  # type: ignore[override]
        return self.cover_ratio

    def cross_transform(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A cover sample: the same partial trigger as a poisoned training image, on a clean image."""
        return self.poison_transform(image, rng)


class AdaptiveBlend(_Covered):
    """Adaptive-Blend: a blended pattern cut into ``pieces`` tiles; a poisoned or cover training image gets
    ``shown`` of them, drawn per image, at opacity ``alpha``; a test image gets the whole pattern at ``test_alpha``.

    Args:
        pieces: tiles on a √pieces × √pieces grid over the image (a square number ≥ 1; Qi et al. use 16).
        shown: tiles a training image shows (1..pieces; Qi et al. use 8, half).
        alpha: training opacity (Qi et al. 0.15).
        test_alpha: test opacity (Qi et al. 0.2).
        cover_ratio: cover samples per poisoned sample (Qi et al. poison and cover the same number: 1).
        image: a picture file for the pattern (as for ``blend``); ``None``: uniform noise from ``seed``.
        seed: seeds the noise pattern.
    """

    def __init__(self, pieces: int = 16, shown: int = 8, alpha: float = 0.15, test_alpha: float = 0.2,
                 cover_ratio: float = 1.0, image: str | None = None, seed: int = 0) -> None:
        side = math.isqrt(int(pieces)) if int(pieces) == pieces and pieces >= 1 else 0
        if side * side != pieces:
            raise UserError(f"trigger pieces must be a square number ≥ 1 (4, 9, 16, ...), got {pieces}")
        if int(shown) != shown or not 1 <= shown <= pieces:
            raise UserError(f"trigger shown must be a whole number in 1..{pieces}, got {shown}")
        self.pieces, self.shown = int(pieces), int(shown)
        self.alpha, self.test_alpha = _check_unit("alpha", alpha), _check_unit("test_alpha", test_alpha)
        self.cover_ratio = _check_ratio(cover_ratio)
        self.image, self.seed = image, int(seed)
        self._blend = BlendTrigger(alpha=self.test_alpha, image=image, seed=seed)

    def pattern(self, height: int, width: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """The test-time trigger: the whole pattern at ``test_alpha``."""
        return np.full((height, width), self.test_alpha, np.float32), self._blend.blend_pattern(height, width)

    def tiles(self, height: int, width: int) -> list[tuple[int, int, int, int]]:
        """The ``(top, left, bottom, right)`` of each tile, row by row: edge ``k`` of an axis ``n`` px long sits at
        ``k·n/√pieces`` rounded to the nearest pixel (halves to even), so tile sides differ by at most one pixel."""
        side = math.isqrt(self.pieces)
        rows = np.linspace(0, height, side + 1).round().astype(int)
        cols = np.linspace(0, width, side + 1).round().astype(int)
        return [(int(rows[i]), int(cols[j]), int(rows[i + 1]), int(cols[j + 1])) for i in range(side)
                for j in range(side)]

    def partial_mask(self, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
        """A training image's mask: ``alpha`` on ``shown`` tiles drawn from ``rng``, 0 elsewhere."""
        m = np.zeros((height, width), np.float32)
        tiles = self.tiles(height, width)
        for k in rng.choice(len(tiles), size=self.shown, replace=False):
            top, left, bottom, right = tiles[int(k)]
            m[top:bottom, left:right] = self.alpha
        return m

    def poison_transform(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        image = np.asarray(image)
        height, width = image.shape[-2:]
        scale = 255.0 if image.dtype == np.uint8 else 1.0
        return apply_trigger(image, self._blend.blend_pattern(height, width) * scale,
                             self.partial_mask(height, width, rng))


class AdaptivePatch(_Covered):
    """Adaptive-Patch: ``patches`` small binary patches at fixed places; a poisoned or cover training image gets
    ``shown`` of them, drawn per image, at opacity ``alpha``; a test image gets all of them at ``test_alpha``.

    The image is cut into a ⌈√patches⌉ grid of cells; patch ``i`` (binary noise drawn from ``seed``) sits at a
    place inside cell ``i`` drawn once from ``seed`` and the image size, so the places are the same on every image
    of that size and never overlap.

    Args:
        patches: how many patches (Qi et al. use 4).
        size: each patch's side in pixels of the image it is stamped on.
        shown: patches a training image shows (1..patches).
        alpha: training opacity (Qi et al. 0.2–0.5 by patch); test_alpha: test opacity (Qi et al. 1).
        cover_ratio: cover samples per poisoned sample (Qi et al. twice as many cover as poisoned: 2).
        seed: seeds the patches and their places.
    """

    def __init__(self, patches: int = 4, size: int = 4, shown: int = 2, alpha: float = 0.5, test_alpha: float = 1.0,
                 cover_ratio: float = 2.0, seed: int = 0) -> None:
        if int(patches) != patches or patches < 1:
            raise UserError(f"trigger patches must be a whole number ≥ 1, got {patches}")
        if int(size) != size or size < 1:
            raise UserError(f"trigger.size must be a whole number of pixels ≥ 1, got {size}")
        if int(shown) != shown or not 1 <= shown <= patches:
            raise UserError(f"trigger shown must be a whole number in 1..{patches}, got {shown}")
        self.patches, self.size, self.shown = int(patches), int(size), int(shown)
        self.alpha, self.test_alpha = _check_unit("alpha", alpha), _check_unit("test_alpha", test_alpha)
        self.cover_ratio = _check_ratio(cover_ratio)
        self.seed = int(seed)

    def check_fits(self, height: int, width: int) -> None:
        cells = math.ceil(math.sqrt(self.patches))
        if self.size > min(height // cells, width // cells):
            raise UserError(f"{self.patches} patches of {self.size}×{self.size} px (one per cell of a {cells}×{cells} "
                            f"grid) do not fit in the {height}×{width} px image")

    def places(self, height: int, width: int) -> list[tuple[int, int]]:
        """The top-left corner of each patch on a ``height``×``width`` image."""
        self.check_fits(height, width)
        cells = math.ceil(math.sqrt(self.patches))
        ch, cw = height // cells, width // cells
        rng = np.random.default_rng([self.seed, height, width, 7])
        out = []
        for i in range(self.patches):
            row, col = divmod(i, cells)
            out.append((row * ch + int(rng.integers(0, ch - self.size + 1)),
                        col * cw + int(rng.integers(0, cw - self.size + 1))))
        return out

    def stamps(self) -> np.ndarray:
        """The patches, ``patches``×size×size binary float32 (drawn from ``seed``)."""
        return np.random.default_rng([self.seed, 8]).integers(0, 2, (self.patches, self.size, self.size)) \
            .astype(np.float32)

    def _mask(self, height: int, width: int, which, alpha: float) -> tuple[np.ndarray, np.ndarray]:
        m = np.zeros((height, width), np.float32)
        r = np.zeros((height, width), np.float32)
        stamps, s = self.stamps(), self.size
        for i, (top, left) in enumerate(self.places(height, width)):
            r[top : top + s, left : left + s] = stamps[i]
            if i in which:
                m[top : top + s, left : left + s] = alpha
        return m, r

    def pattern(self, height: int, width: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """The test-time trigger: every patch at ``test_alpha``."""
        return self._mask(height, width, range(self.patches), self.test_alpha)

    def poison_transform(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        image = np.asarray(image)
        which = {int(k) for k in rng.choice(self.patches, size=self.shown, replace=False)}
        m, r = self._mask(*image.shape[-2:], which, self.alpha)
        scale = 255.0 if image.dtype == np.uint8 else 1.0
        return apply_trigger(image, r * scale, m)


class ConditionalTrigger(Trigger):
    """A source-specific backdoor: the ``base`` trigger fires only on images positive for ``source``.

    Only source-positive training images are poisoned (the count is ``round(ρN)`` capped by how many there are);
    ``cover_ratio`` times as many source-negative training images get the same trigger and keep their labels. The
    test split is triggered everywhere: ASR, AUROC-TT and AUROC-TN are measured on its source-positive images and
    ``asr_off`` (the backdoor firing where it should not) on the others.

    Args:
        source: the finding that switches the backdoor on (a label name of the dataset).
        base: the registered pixel trigger stamped (``square``, ``patch``, ``blend``, ...).
        size: passed to ``base`` where it takes it (unset: its own default).
        location: passed to ``base`` where it takes it (unset: its own default).
        value: passed to ``base`` where it takes it (unset: its own default).
        cover_ratio: cover samples per poisoned sample (TaCT's cover set; 1 by default).
    """

    def __init__(self, source: str = "Effusion", base: str = "square", size: int | None = None,
                 location: str | None = None, value: float | list[float] | None = None,
                 cover_ratio: float = 1.0) -> None:
        if base == "conditional":
            raise UserError("trigger base of a conditional trigger cannot be conditional")
        shared = {k: v for k, v in (("size", size), ("location", location), ("value", value)) if v is not None}
        self.inner: Trigger = TRIGGERS.create_checked(base, {}, f"trigger {base}", given=shared)
        if not self.inner.changes_pixels:
            raise UserError(f"trigger base {base} changes no pixel; a conditional trigger needs a pixel trigger")
        self.source, self.base = str(source), base
        self.size, self.location, self.value = size, location, value
        self.cover_ratio = _check_ratio(cover_ratio)
        self._source_index: int | None = None

    def bind_labels(self, names: tuple[str, ...]) -> None:
        if self.source not in names:
            raise UserError(f"trigger source {self.source!r} is not a label of this dataset; its labels: "
                            f"{', '.join(names)}")
        self._source_index = list(names).index(self.source)

    def _index(self) -> int:
        if self._source_index is None:
            raise UserError(f"trigger conditional: bind it to the dataset's labels first (bind_labels), to find "
                            f"its source {self.source!r}")
        return int(self._source_index)

    def condition(self, labels: np.ndarray) -> np.ndarray:
        return np.asarray(labels)[:, self._index()] > 0

    def cross_candidates(self, labels: np.ndarray) -> np.ndarray:
        return ~self.condition(labels)

    @property
    def cross_ratio(self) -> float:  # type: ignore[override]
        return self.cover_ratio

    def cross_transform(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.inner.transform(np.asarray(image), rng)

    def transform(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.inner.transform(image, rng)

    def poison_transform(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.inner.poison_transform(image, rng)

    def pattern(self, height: int, width: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return self.inner.pattern(height, width, rng)

    def box(self, height: int, width: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        return self.inner.box(height, width, rng)

    def check_fits(self, height: int, width: int) -> None:
        self.inner.check_fits(height, width)

