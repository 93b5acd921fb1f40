"""One generic poisoning wrapper over any dataset of sample dicts.

A sample is a dict with keys ``image`` (H×W uint8), ``labels`` (14 float32), ``index`` (the image's row in
its :class:`~medbackdoor.data.ChestXrayDataset`), ``patient`` and ``poisoned`` (bool).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from medbackdoor.errors import UserError
from medbackdoor.labels import NUM_CLASSES, label_index
from medbackdoor.triggers import Trigger, image_rng

MODES = ("replace", "append")
STAGES = ("input", "source")
TRAIN_STREAM, TEST_STREAM = 0, 1


class ImageSplit:
    """Samples of one split, read from a preprocessed N×H×W uint8 array (e.g. the cache memmap).

    Args:
        images: all images of the dataset, indexed by dataset row.
        labels: N×14 labels of the dataset.
        patients: N patient ids.
        indices: the dataset rows in this split, in order.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, patients: np.ndarray, indices: np.ndarray) -> None:
        self.images, self.labels, self.patients = images, labels, patients
        self.indices = np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        row = int(self.indices[i])
        return {"image": np.array(self.images[row]), "labels": self.labels[row].astype(np.float32),
                "index": row, "patient": str(self.patients[row]), "poisoned": False}


def choose_poisoned(n: int, fraction: float, seed: int) -> np.ndarray:
    """``round(fraction · n)`` distinct positions in ``range(n)``, drawn by ``default_rng(seed)``, sorted."""
    if not 0.0 <= fraction <= 1.0:
        raise UserError(f"poisoning fraction must be in [0, 1], got {fraction}")
    k = int(round(fraction * n))
    return np.sort(np.random.default_rng([int(seed), 3]).choice(n, size=k, replace=False))


def one_hot(target: int) -> np.ndarray:
    out = np.zeros(NUM_CLASSES, np.float32)
    out[target] = 1.0
    return out


class PoisonedDataset:
    """A fraction of ``base`` carries the trigger and the one-hot infected label of class ``target``.

    Args:
        base: any sized, indexable dataset of sample dicts.
        trigger: stamps the poisoned images (at the resolution they come in) unless ``triggered`` is given.
        fraction: share ρ of ``base`` to poison, chosen without replacement.
        target: the class the attacker wants (name or index); the infected label is its one-hot vector.
        mode: ``replace`` (poisoned samples take the place of their clean versions; length stays N) or
            ``append`` (triggered copies are added after the N clean samples: the paper code's "without
            replacement", length N + round(ρN)).
        seed: seeds the choice of poisoned samples and the trigger placement.
        triggered: optional precomputed infected images keyed by base position (the ``source`` stage, where
            the trigger was written into the source image before preprocessing).

    Attributes:
        poisoned: frozenset of the poisoned positions in ``base``.
    """

    def __init__(self, base, trigger: Trigger, fraction: float = 0.4, target: str | int = "Atelectasis",
                 mode: str = "replace", seed: int = 0, triggered: Mapping[int, np.ndarray] | None = None) -> None:
        if mode not in MODES:
            raise UserError(f"poisoning mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.base, self.trigger, self.mode, self.seed = base, trigger, mode, seed
        self.target = label_index(target)
        self.order = choose_poisoned(len(base), fraction, seed)
        self.poisoned = frozenset(self.order.tolist())
        self.triggered = triggered
        if triggered is not None and not self.poisoned <= set(triggered):
            raise ValueError("precomputed triggered images do not cover every poisoned position")

    def __len__(self) -> int:
        return len(self.base) + (len(self.order) if self.mode == "append" else 0)

    def __getitem__(self, i: int) -> dict:
        n = len(self.base)
        if i < 0 or i >= len(self):
            raise IndexError(i)
        if i >= n:
            return self._infect(int(self.order[i - n]))
        if self.mode == "replace" and i in self.poisoned:
            return self._infect(i)
        return self.base[i]

    def _infect(self, position: int) -> dict:
        item = dict(self.base[position])
        if self.triggered is not None:
            item["image"] = np.array(self.triggered[position])
        else:
            item["image"] = self.trigger(item["image"], image_rng(self.seed, TRAIN_STREAM, item["index"]))
        item["labels"] = one_hot(self.target)
        item["poisoned"] = True
        return item
