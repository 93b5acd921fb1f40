"""One generic poisoning wrapper over any dataset of sample dicts.

A sample is a dict with keys ``image`` (H×W uint8), ``labels`` (14 float32), ``index`` (the image's row in
its :class:`~medbackdoor.data.ChestXrayDataset`), ``patient`` and ``poisoned`` (bool).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medbackdoor.errors import UserError
from medbackdoor.labels import LABELS, NUM_CLASSES, infected_label, label_index
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

    def labels_array(self) -> np.ndarray:
        """The split's labels, len×14 float32, without reading any image."""
        return self.labels[self.indices].astype(np.float32)


def choose_poisoned(n: int, fraction: float, seed: int) -> np.ndarray:
    """``round(fraction · n)`` distinct positions in ``range(n)``, drawn by ``default_rng(seed)``, sorted."""
    if not 0.0 <= fraction <= 1.0:
        raise UserError(f"poisoning fraction must be in [0, 1], got {fraction}")
    k = int(round(fraction * n))
    return np.sort(np.random.default_rng([int(seed), 3]).choice(n, size=k, replace=False))


def choose_among(candidates: np.ndarray, n: int, fraction: float, seed: int) -> np.ndarray:
    """``min(round(fraction · n), len(candidates))`` distinct positions drawn from ``candidates``, sorted: ρ stays
    the share of the whole set of ``n``, capped by how many candidates there are."""
    if not 0.0 <= fraction <= 1.0:
        raise UserError(f"poisoning fraction must be in [0, 1], got {fraction}")
    candidates = np.asarray(candidates, dtype=np.int64)
    k = min(int(round(fraction * n)), len(candidates))
    return np.sort(candidates[np.random.default_rng([int(seed), 3]).choice(len(candidates), size=k, replace=False)])


def one_hot(target: int, num_classes: int = NUM_CLASSES) -> np.ndarray:
    out = np.zeros(num_classes, np.float32)
    out[target] = 1.0
    return out


class PoisonedDataset:
    """A fraction of ``base`` carries the trigger and an infected label for class ``target``.

    Args:
        base: any sized, indexable dataset of sample dicts.
        trigger: stamps the poisoned images (at the resolution they come in) unless ``triggered`` is given.
        fraction: share ρ of ``base`` to poison, chosen without replacement.
        target: the class the attacker wants (name or index).
        mode: ``replace`` (poisoned samples take the place of their clean versions; length stays N) or
            ``append`` (triggered copies are added after the N clean samples: the paper code's "without
            replacement", length N + round(ρN)).
        seed: seeds the choice of poisoned samples and the trigger placement.
        triggered: optional precomputed infected images, K×H×W aligned with :attr:`order` (e.g. a memmap; the
            ``source`` stage, where the trigger was written into the source image before preprocessing). Without
            it the trigger is stamped when a sample is read, seeded by (seed, image), so nothing is held in memory.
        label: the label policy (:func:`infected_label`): ``onehot`` (the paper), ``add`` or ``keep`` (clean-label:
            only images already positive for the target are candidates).
        candidates: positions that may be poisoned (default: all, or the target-positive ones for ``keep``), e.g.
            the images that carry a label-only trigger; the count is ``round(ρN)`` capped by their number.
        label_names: the dataset's label names, against which a ``target`` name is resolved (default the 14
            ChestX-ray14 findings).

    Attributes:
        poisoned: frozenset of the poisoned positions in ``base``.
        order: the same positions as a sorted array.
        requested: ``round(ρN)``, the count asked for (more than ``len(order)`` when the candidates ran out).
    """

    def __init__(self, base, trigger: Trigger, fraction: float = 0.4, target: str | int = "Atelectasis",
                 mode: str = "replace", seed: int = 0, triggered: np.ndarray | None = None, label: str = "onehot",
                 candidates: np.ndarray | None = None, label_names: Sequence[str] = LABELS) -> None:
        if mode not in MODES:
            raise UserError(f"poisoning mode must be one of {', '.join(MODES)}, got {mode!r}")
        infected_label(np.zeros(NUM_CLASSES), 0, label)  # validates the policy
        self.base, self.trigger, self.mode, self.seed, self.label = base, trigger, mode, seed, label
        self.target = label_index(target, label_names)
        if label == "keep":
            positive = np.flatnonzero(self._base_labels()[:, self.target] > 0)
            candidates = positive if candidates is None else np.intersect1d(candidates, positive)
        self.requested = int(round(fraction * len(base)))
        if candidates is None:
            self.order = choose_poisoned(len(base), fraction, seed)
        else:
            self.order = choose_among(candidates, len(base), fraction, seed)
        self.candidates = len(base) if candidates is None else len(candidates)
        self.poisoned = frozenset(self.order.tolist())
        self.triggered = triggered
        if triggered is not None and len(triggered) != len(self.order):
            raise ValueError(f"{len(triggered)} precomputed triggered images for {len(self.order)} poisoned samples")

    kept: np.ndarray | None = None  # positions as trained that remain after :meth:`drop` (None: all)

    def drop(self, positions) -> PoisonedDataset:
        """Leave out samples (positions in the training set as trained, e.g. flagged by a data defense).

        Every per-sample view (length, items, labels, ``poisoned_mask``, ``sample_positions``) then covers the
        kept samples only, in their order.
        """
        every = len(self.base) + (len(self.order) if self.mode == "append" else 0)
        positions = np.unique(np.asarray(list(positions), dtype=np.int64))
        if len(positions) and (positions.min() < 0 or positions.max() >= every):
            raise UserError(f"sample positions to drop must be in 0..{every - 1}")
        self.kept = np.setdiff1d(np.arange(every), positions)
        return self

    def _keep(self, values: np.ndarray) -> np.ndarray:
        return values if self.kept is None else values[self.kept]

    def __len__(self) -> int:
        if self.kept is not None:
            return len(self.kept)
        return len(self.base) + (len(self.order) if self.mode == "append" else 0)

    def __getitem__(self, i: int) -> dict:
        n = len(self.base)
        if i < 0 or i >= len(self):
            raise IndexError(i)
        if self.kept is not None:
            i = int(self.kept[i])
        if i >= n:
            return self.infect(int(self.order[i - n]))
        if self.mode == "replace" and i in self.poisoned:
            return self.infect(i)
        return self.base[i]

    def _base_labels(self) -> np.ndarray:
        if hasattr(self.base, "labels_array"):
            return np.array(self.base.labels_array(), np.float32)
        return np.stack([self.base[i]["labels"] for i in range(len(self.base))]).astype(np.float32)

    def labels_array(self) -> np.ndarray:
        """The labels of every sample, len×14 float32 (infected ones by the label policy), without reading any
        image."""
        labels = self._base_labels()
        infected = infected_label(labels[self.order], self.target, self.label)
        if self.mode == "append":
            return self._keep(np.concatenate([labels, infected]))
        labels[self.order] = infected
        return self._keep(labels)

    def sample_positions(self) -> np.ndarray:
        """For each sample as trained, its position in ``base`` (appended copies point at their source)."""
        n = len(self.base)
        return self._keep(np.concatenate([np.arange(n), self.order]) if self.mode == "append" else np.arange(n))

    def poisoned_mask(self) -> np.ndarray:
        """For each sample as trained, whether it is an infected one (the truth a defense is scored against)."""
        n = len(self.base)
        if self.mode == "append":
            return self._keep(np.r_[np.zeros(n, bool), np.ones(len(self.order), bool)])
        mask = np.zeros(n, bool)
        mask[self.order] = True
        return self._keep(mask)

    def infect(self, position: int) -> dict:
        """The infected sample made from ``base[position]`` (trigger stamped, label one-hot target)."""
        item = dict(self.base[position])
        if self.triggered is not None:
            item["image"] = np.array(self.triggered[int(np.searchsorted(self.order, position))])
        else:
            item["image"] = self.trigger(item["image"], image_rng(self.seed, TRAIN_STREAM, item["index"]))
        item["labels"] = infected_label(item["labels"], self.target, self.label)
        item["poisoned"] = True
        return item
