"""Lazy views of images: index or slice them like an array, and only the images asked for are read.

Runs never hold a whole split in memory: evaluation reads these views a batch at a time (``view[lo:hi]``), and
the images come from the preprocessing cache (a memmap) or are made on demand.
"""

from __future__ import annotations

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
