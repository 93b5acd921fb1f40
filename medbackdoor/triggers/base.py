"""The trigger primitive ``p(x, r, m) = x ⊙ (1 − m) + r ⊙ m`` and the base class every trigger extends."""

from __future__ import annotations

import numpy as np

from medbackdoor._registry import Registry
from medbackdoor.errors import UserError

TRIGGERS: Registry = Registry("trigger", group="medbackdoor.triggers")  # filled by medbackdoor.triggers; base below


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


class Trigger:
    """A trigger changes an H×W or C×H×W image (uint8 in 0..255 or float in 0..1) given a random generator.

    Most triggers are a mask ``m`` and a pattern ``r`` in [0, 1], stamped with the paper's Eq. 1
    (:func:`apply_trigger`): they override one method, :meth:`pattern`. A trigger that is not a mask and a pattern
    (an additive signal, a spectrum blend, a warp) overrides :meth:`transform` instead. ``rng`` drives every
    random choice, so pass :func:`image_rng` to make the draw depend only on (seed, image). A trigger's ``repr``
    names all its parameters: cached infected images are keyed by it.
    """

    changes_pixels: bool = True  # False for a label-only trigger (the image is left as it is)
    cross_ratio: float = 0.0  # cross samples asked for, per poisoned sample (see :meth:`cross_transform`)

    def carriers(self, labels: np.ndarray) -> np.ndarray | None:
        """Which images (rows of an N×L label array) carry the trigger naturally; None: any image can be
        triggered (every pixel trigger). A label-only trigger overrides this."""
        return None

    def condition(self, labels: np.ndarray) -> np.ndarray | None:
        """For a pixel trigger whose backdoor should fire only on some images (a source-specific attack), a bool
        mask of the rows of an N×L label array where it should: only those are poisoned, ASR is measured on the
        triggered test images among them and ``asr_off`` on the others. None (the default): every image."""
        return None

    def bind_labels(self, names: tuple[str, ...]) -> None:
        """Called with the dataset's label names before :meth:`carriers` (a label-only trigger resolves its
        findings there); pixel triggers ignore it."""

    def pattern(self, height: int, width: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(m, r)``: float32 arrays, the H×W mask and the pattern (values in [0, 1]): H×W, applied to every
        channel alike, or C×H×W for a colour pattern."""
        raise NotImplementedError(f"{type(self).__name__} overrides neither pattern nor transform")

    def transform(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The infected image, same shape and dtype as ``image`` (default: Eq. 1 with :meth:`pattern`).

        ``image`` is H×W (gray) or C×H×W (colour, channel first). An H×W mask and pattern apply to every channel
        alike; a colour pattern (C×H×W, a trigger made with ``channels: 3``) needs a colour image."""
        m, r = self.pattern(*image.shape[-2:], rng)
        check_channels(self, r, image)
        scale = 255.0 if image.dtype == np.uint8 else 1.0
        return apply_trigger(image, r * scale, m)

    def poison_transform(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The image a poisoned *training* sample gets (default: :meth:`transform`, the test-time trigger).

        An adaptive trigger (Qi et al., ICLR 2023) overrides this to show only part of itself on the training
        images, while test images get all of it: the poisoning wrapper, the ``source`` stage and the survival
        count call this for poisoned training images, and :meth:`transform` for the test split.
        """
        return self.transform(image, rng)

    def cross_candidates(self, labels: np.ndarray) -> np.ndarray | None:
        """Which training images (rows of an N×L label array) may become cross samples, a bool mask, or None
        (the default: any image not poisoned). A conditional trigger keeps its cover samples off its condition."""
        return None

    def cross_transform(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
        """A *cross* sample made from a clean image, or None (the default: the trigger asks for none).

        A trigger that sets :attr:`cross_ratio` > 0 overrides this: the poisoning wrapper then turns
        ``round(cross_ratio · K)`` clean training images (K poisoned) into cross samples, which keep their own
        labels and are not marked poisoned, so the model learns to answer the exact trigger only (WaNet's noise
        mode: the image warped by the field plus random noise).
        """
        return None

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.transform(np.asarray(image), rng)

    def box(self, height: int, width: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """The bounding box ``(top, left, bottom, right)`` (exclusive) of the pixels the trigger may change
        for the same ``rng`` draw (the mask's support; the whole image for a trigger without a mask)."""
        try:
            m, _ = self.pattern(height, width, rng)
        except NotImplementedError:
            return (0, 0, height, width)
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        if not len(rows):
            return (0, 0, 0, 0)
        return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1

    def check_fits(self, height: int, width: int) -> None:
        """Raise :class:`UserError` if the trigger cannot be placed on an image of this size."""
        if min(height, width) < 1:
            raise UserError(f"cannot place a trigger on a {height}×{width} image")

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in sorted(vars(self).items()) if not k.startswith("_"))
        return f"{type(self).__name__}({params})"


TRIGGERS.base = Trigger


def check_channels(trigger, pattern: np.ndarray, image: np.ndarray) -> None:
    """Refuse a colour pattern (C×H×W) on an image without those C channels (one :class:`UserError` line)."""
    if np.ndim(pattern) == 3 and (np.ndim(image) != 3 or np.shape(image)[0] != np.shape(pattern)[0]):
        raise UserError(f"{type(trigger).__name__} has a {np.shape(pattern)[0]}-channel colour pattern but the "
                        f"images have shape {np.shape(image)}: use a gray pattern (channels 1, one value) on gray data")


def check_pattern_channels(channels) -> int:
    """A trigger's ``channels`` option: 1 (one pattern for every channel) or 3 (an RGB pattern)."""
    if isinstance(channels, bool) or channels not in (1, 3):
        raise UserError(f"trigger channels must be 1 (a gray pattern) or 3 (an RGB pattern), got {channels!r}")
    return int(channels)


def to_unit(image: np.ndarray) -> np.ndarray:
    """An image as float64 in [0, 1] (uint8 is divided by 255)."""
    image = np.asarray(image)
    return image.astype(np.float64) / 255.0 if image.dtype == np.uint8 else image.astype(np.float64)


def from_unit(x: np.ndarray, like: np.ndarray) -> np.ndarray:
    """Back to the dtype of ``like``: clipped to [0, 1]; uint8 is scaled to 0..255 and rounded."""
    x = np.clip(x, 0.0, 1.0)
    if np.asarray(like).dtype == np.uint8:
        return np.rint(x * 255.0).astype(np.uint8)
    return x.astype(np.asarray(like).dtype)
