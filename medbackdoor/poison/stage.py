"""Where the trigger is written: into the model input (``input``) or into the source image (``source``).

At the ``source`` stage the trigger goes into the full-resolution file, as an attacker who only edits the
dataset would do, and then meets the victim's preprocessing (crop, resize). Some triggers do not survive: the
paper's code centre-cropped 60% of a 1024² image and resized it to 224 px with nearest neighbour, which drops
most 1×1 and 2×2 triggers. :func:`triggered_images` returns, per image, whether any input pixel changed.

For whole splits, :func:`triggered_view` keeps memory flat: at the ``input`` stage the trigger is stamped when an
image is read (:class:`StampedRows`, seeded per image, so the pixels are those of a precomputed array); at the
``source`` stage the infected inputs are preprocessed once into a uint8 memmap next to the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medbackdoor.data.base import ChestXrayDataset
from medbackdoor.data.cache import cache_path, lock_for, preprocess_indices, write_memmap
from medbackdoor.data.preprocess import Preprocess
from medbackdoor.data.views import ImageRows, iter_chunks
from medbackdoor.errors import UserError
from medbackdoor.poison.wrapper import STAGES, TRAIN_STREAM
from medbackdoor.triggers import Trigger, image_rng


def stamper(trigger: Trigger, stream: int):
    """How images of ``stream`` get the trigger: poisoned training images (``TRAIN_STREAM``) by
    :meth:`Trigger.poison_transform` (an adaptive trigger shows only part of itself there), every other stream
    (the test split) by the trigger itself."""
    if stream == TRAIN_STREAM:
        return lambda image, rng: trigger.poison_transform(np.asarray(image), rng)
    return trigger


class _StampSource:
    """Picklable transform that stamps the trigger on a source image (for worker processes)."""

    def __init__(self, trigger: Trigger, seed: int, stream: int) -> None:
        self.trigger, self.seed, self.stream = trigger, seed, stream

    def __call__(self, source: np.ndarray, index: int) -> np.ndarray:
        return stamper(self.trigger, self.stream)(source, image_rng(self.seed, self.stream, index))


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
        seed: with ``stream`` and the row, seeds each image's placement (:func:`image_rng`).
        stream: with ``seed`` and the row, seeds each image's placement (:func:`image_rng`).
        prep: the victim's preprocessing (``source`` stage).
        workers: worker processes for the ``source`` stage.

    Returns:
        ``(images, survived)``: K×S×S uint8 infected inputs (K×C×S×S for colour), and a K bool array, True
        where at least one input pixel differs from the clean input.
    """
    if stage not in STAGES:
        raise UserError(f"trigger.stage must be one of {', '.join(STAGES)}, got {stage!r}")
    rows = np.asarray(rows, dtype=np.int64)
    size = clean.shape[-1]
    if stage == "input":
        trigger.check_fits(size, size)
        stamp = stamper(trigger, stream)
        out = np.stack([stamp(clean[k], image_rng(seed, stream, r)) for k, r in enumerate(rows)]) if len(rows) \
            else np.empty((0, *np.shape(clean)[1:]), np.uint8)
    else:
        out = preprocess_indices(dataset, rows, size, prep or Preprocess(), _StampSource(trigger, seed, stream),
                                 workers=workers)
    survived = (out != np.asarray(clean)).reshape(len(rows), int(np.prod(out.shape[1:]))).any(1)
    return out, survived


class StampedRows:
    """Input-stage infected images of some dataset rows, stamped when read (image ``r`` uses
    ``image_rng(seed, stream, r)``, so a read equals the precomputed image whatever the order or batch)."""

    def __init__(self, clean: ImageRows, trigger: Trigger, seed: int, stream: int) -> None:
        self.clean, self.trigger, self.seed, self.stream = clean, trigger, seed, stream

    def __len__(self) -> int:
        return len(self.clean)

    def __getitem__(self, sel) -> np.ndarray:
        rows, images = self.clean.rows[sel], self.clean[sel]
        stamp = stamper(self.trigger, self.stream)
        if np.ndim(rows) == 0:
            return stamp(images, image_rng(self.seed, self.stream, int(rows)))
        if not len(rows):
            return images
        return np.stack([stamp(img, image_rng(self.seed, self.stream, int(r))) for img, r in zip(images, rows)])


def changed(clean, infected, chunk: int = 256) -> np.ndarray:
    """Per image, True where at least one pixel of ``infected`` differs from ``clean`` (read in chunks)."""
    out = np.zeros(len(clean), bool)
    for lo, block in iter_chunks(clean, chunk):
        other = np.asarray(infected[lo : lo + len(block)])
        out[lo : lo + len(block)] = (block != other).reshape(len(block), -1).any(1)
    return out


@dataclass(frozen=True)
class ImageSource:
    """Where a split's model inputs come from.

    Args:
        dataset: the dataset (read again at the ``source`` stage).
        images: its preprocessed images (the cache memmap), indexed by dataset row.
        size: the model input side; with ``prep`` and ``cache_dir`` it names the cache the images come from (the
            ``source`` stage's memmap is written beside it).
        prep: the victim's preprocessing.
        cache_dir: the cache folder (None: the default).
        workers: worker processes for the ``source`` stage.
        progress: show a progress bar while writing the ``source`` stage's memmap.
    """

    dataset: ChestXrayDataset
    images: np.ndarray
    size: int
    prep: Preprocess
    cache_dir: str | os.PathLike | None = None
    workers: int | None = 0
    progress: bool = False


@dataclass(frozen=True)
class Stamp:
    """How a split gets the trigger: ``trigger`` at ``stage`` (``input`` or ``source``), each image's draws seeded
    by ``seed``, ``stream`` and its row (:func:`~medbackdoor.triggers.image_rng`)."""

    trigger: Trigger
    stage: str
    seed: int
    stream: int


def triggered_view(source: ImageSource, rows: np.ndarray, stamp: Stamp):
    """Infected model inputs for dataset ``rows``, as a lazy view, and whether the trigger survived in each.

    Returns:
        ``(view, survived)``: an indexable K×S×S uint8 view (``view[lo:hi]``), and a K bool array.
    """
    if stamp.stage not in STAGES:
        raise UserError(f"trigger.stage must be one of {', '.join(STAGES)}, got {stamp.stage!r}")
    rows = np.asarray(rows, dtype=np.int64)
    clean = ImageRows(source.images, rows)
    if stamp.stage == "input":
        stamp.trigger.check_fits(source.size, source.size)
        view = StampedRows(clean, stamp.trigger, stamp.seed, stamp.stream)
    else:
        view = _source_memmap(source, rows, stamp)
    return view, changed(clean, view)


def _source_memmap(source: ImageSource, rows: np.ndarray, stamp: Stamp) -> np.ndarray:
    """Source-stage infected inputs in a memmap beside the cache, keyed by everything that sets their pixels."""
    base = cache_path(source.dataset, source.size, source.prep, source.cache_dir)
    spec = {"cache": base.name, "trigger": repr(stamp.trigger), "seed": int(stamp.seed), "stream": int(stamp.stream),
            "rows": hashlib.sha256(rows.tobytes()).hexdigest()}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(base).with_name(f"{base.stem}-triggered-{key}.npy")
    if not path.exists():
        with lock_for(path):
            if not path.exists():
                write_memmap(path, source.dataset, rows, source.size, source.prep,
                             _StampSource(stamp.trigger, stamp.seed, stamp.stream), source.workers, source.progress,
                             desc="writing triggered source images")
    return np.load(path, mmap_mode="r")
