"""Lazy views of images: index or slice them like an array, and only the images asked for are read.

Runs never hold a whole split in memory: evaluation reads these views a batch at a time (``view[lo:hi]``), and
the images come from the preprocessing cache (a memmap) or are made on demand.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np


class ImageRows:
    """Images of some dataset rows, read from an N×H×W array (the cache memmap) when indexed.

    Args:
        images: all preprocessed images of the dataset, indexed by dataset row.
        rows: the dataset rows this view holds, in order.
    """

    def __init__(self, images: np.ndarray, rows: np.ndarray) -> None:
        self.images = images
        self.rows = np.asarray(rows, dtype=np.int64)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *self.images.shape[1:])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, sel) -> np.ndarray:
        """One image (H×W) for an integer, a K×H×W array for a slice or an index array; always a copy."""
        return np.array(self.images[self.rows[sel]])


class SampleImages:
    """The ``image`` of each sample of a dataset of sample dicts, as an indexable view (e.g. a poisoned split)."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, sel) -> np.ndarray:
        if isinstance(sel, int | np.integer):
            return np.array(self.dataset[int(sel)]["image"])
        positions = range(len(self))[sel] if isinstance(sel, slice) else np.asarray(sel).tolist()
        return np.stack([self.dataset[int(i)]["image"] for i in positions])


def iter_chunks(view, chunk: int = 256):
    """Yield ``(lo, view[lo:lo + chunk])`` over a view, in order."""
    for lo in range(0, len(view), chunk):
        yield lo, view[lo : lo + chunk]


def materialise(view, folder: str | os.PathLike, chunk: int = 256) -> np.ndarray:
    """A copy of a view's images as one read-only N×H×W uint8 memmap: the pixels, and nothing else.

    The copy is written a chunk at a time into a file in ``folder`` that has no name (``tempfile.TemporaryFile``):
    memory stays flat whatever the number of images, nothing else can open or see a half-written copy, and the
    file goes when its last map is closed. The array holds no reference to ``view`` or to anything ``view``
    holds (e.g. the poisoning wrapper behind a training set as trained).

    Args:
        view: anything sized whose slices ``view[lo:hi]`` are K×H×W uint8 arrays.
        folder: where the file's blocks live (a disk folder, e.g. the image cache; not a RAM-backed /tmp).
        chunk: images read and written at a time.
    """
    n = len(view)
    first = np.asarray(view[0 : min(chunk, n)])
    if first.dtype != np.uint8 or first.ndim != 3:
        raise TypeError(f"expected K×H×W uint8 images, got {first.dtype} {first.shape}")
    shape = (n, *first.shape[1:])
    if n == 0:
        return np.zeros(shape, np.uint8)
    Path(folder).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=folder) as handle:
        out = np.memmap(handle, np.uint8, "w+", shape=shape)
        for lo, block in iter_chunks(view, chunk):
            out[lo : lo + len(block)] = block
        out.flush()
        del out
        return np.memmap(handle, np.uint8, "r", shape=shape)
