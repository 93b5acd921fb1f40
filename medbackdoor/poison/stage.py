"""Where the trigger is written: into the model input (``input``) or into the source image (``source``).

At the ``source`` stage the trigger goes into the full-resolution file, as an attacker who only edits the
dataset would do, and then meets the victim's preprocessing (crop, resize). Some triggers do not survive: the
paper's code centre-cropped 60% of a 1024² image and resized it to 224 px with nearest neighbour, which drops
most 1×1 and 2×2 triggers. :func:`triggered_images` returns, per image, whether any input pixel changed.
"""

from __future__ import annotations

import numpy as np

from medbackdoor.data.base import ChestXrayDataset
from medbackdoor.data.cache import preprocess_indices
from medbackdoor.data.preprocess import Preprocess
from medbackdoor.errors import UserError
from medbackdoor.poison.wrapper import STAGES
from medbackdoor.triggers import Trigger, image_rng


class _StampSource:
    """Picklable transform that stamps the trigger on a source image (for worker processes)."""

    def __init__(self, trigger: Trigger, seed: int, stream: int) -> None:
        self.trigger, self.seed, self.stream = trigger, seed, stream

    def __call__(self, source: np.ndarray, index: int) -> np.ndarray:
        return self.trigger(source, image_rng(self.seed, self.stream, index))


def triggered_images(dataset: ChestXrayDataset, rows: np.ndarray, clean: np.ndarray, trigger: Trigger,
                     stage: str, seed: int, stream: int, prep: Preprocess | None = None,
                     workers: int | None = 0) -> tuple[np.ndarray, np.ndarray]:
    """Infected model inputs for dataset ``rows`` and whether the trigger survived in each.

    Args:
        dataset: the dataset the rows index (read again at the ``source`` stage).
        rows: dataset rows to infect.
        clean: their clean model inputs, K×S×S uint8 (from the cache), in the order of ``rows``.
        trigger: the trigger; its size is in pixels of the image it is stamped on.
        stage: ``input`` or ``source``.
        seed, stream: with the row, they seed each image's placement (:func:`image_rng`).
        prep: the victim's preprocessing (``source`` stage).
        workers: worker processes for the ``source`` stage.

    Returns:
        ``(images, survived)``: K×S×S uint8 infected inputs, and a K bool array, True where at least one
        input pixel differs from the clean input.
    """
    if stage not in STAGES:
        raise UserError(f"trigger.stage must be one of {', '.join(STAGES)}, got {stage!r}")
    rows = np.asarray(rows, dtype=np.int64)
    size = clean.shape[-1]
    if stage == "input":
        trigger.check_fits(size, size)
        out = np.stack([trigger(clean[k], image_rng(seed, stream, r)) for k, r in enumerate(rows)]) if len(rows) \
            else np.empty((0, size, size), np.uint8)
    else:
        out = preprocess_indices(dataset, rows, size, prep or Preprocess(), _StampSource(trigger, seed, stream),
                                 workers=workers)
    survived = (out != np.asarray(clean)).reshape(len(rows), size * size).any(1)
    return out, survived
