"""One generic poisoning wrapper over any dataset of sample dicts.

A sample is a dict with keys ``image`` (H×W uint8), ``labels`` (14 float32), ``index`` (the image's row in
its :class:`~medbackdoor.data.ChestXrayDataset`), ``patient`` and ``poisoned`` (bool).

A trigger may also ask for *cross* samples (WaNet's noise mode, :meth:`Trigger.cross_transform`): clean images
changed by a near-miss of the trigger that keep their own labels, so the model learns the trigger exactly and not
whatever resembles it. They are part of the attack but carry no trigger and no target, so they are not marked
poisoned: a defense's truth (:meth:`PoisonedDataset.poisoned_mask`) calls them clean, and
:meth:`PoisonedDataset.cross_mask` says which they are.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medbackdoor.errors import UserError
from medbackdoor.labels import NUM_CLASSES, infected_label, label_index
from medbackdoor.triggers import Trigger, image_rng

MODES = ("replace", "append")
STAGES = ("input", "source")
TRAIN_STREAM, TEST_STREAM, CROSS_STREAM = 0, 1, 2  # :func:`image_rng` streams: poisoned, test and cross images


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


def choose_cross(n: int, poisoned: np.ndarray, ratio: float, seed: int,
                 among: np.ndarray | None = None) -> np.ndarray:
    """``min(round(ratio · len(poisoned)), C)`` distinct positions in ``range(n)`` outside ``poisoned``, drawn
    by ``default_rng([seed, 4])``, sorted: the images that become cross samples. ``among`` (an n-long bool
    mask, :meth:`Trigger.cross_candidates`) limits them further; C counts the positions left to draw from."""
    if not (np.isfinite(ratio) and ratio >= 0):
        raise UserError(f"cross ratio must be a number ≥ 0, got {ratio}")
    clean = np.setdiff1d(np.arange(n), poisoned)
    if among is not None:
        clean = clean[np.asarray(among, bool)[clean]]
    k = min(int(round(ratio * len(poisoned))), len(clean))
    return np.sort(clean[np.random.default_rng([int(seed), 4]).choice(len(clean), size=k, replace=False)])


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
            replacement", length N + round(ρN)). Cross samples follow the same mode: they replace their clean
            images, or are appended after the triggered copies.
        seed: seeds the choice of poisoned and cross samples and the trigger placement.
        triggered: optional precomputed infected images, K×H×W aligned with :attr:`order` (e.g. a memmap; the
            ``source`` stage, where the trigger was written into the source image before preprocessing). Without
            it the trigger is stamped when a sample is read, seeded by (seed, image), so nothing is held in memory.
            Cross samples are always made when read, from the images as they come in (the model inputs).
        label: the label policy (:func:`infected_label`): ``onehot`` (the paper), ``add`` or ``keep`` (clean-label:
            only images already positive for the target are candidates); for a single-label ``task`` also
            ``all-to-all`` (class y becomes (y + 1) mod C).
        candidates: positions that may be poisoned (default: all, or the target-positive ones for ``keep``), e.g.
            the images that carry a label-only trigger; the count is ``round(ρN)`` capped by their number.
        label_names: the dataset's label names, against which a ``target`` name is resolved (needed when
            ``target`` is a name; an index needs none).
        task: the dataset's :class:`~medbackdoor.task.Task`, whose policies write the labels (None: the
            multi-label ones).

    Attributes:
        poisoned: frozenset of the poisoned positions in ``base``.
        order: the same positions as a sorted array.
        requested: ``round(ρN)``, the count asked for (more than ``len(order)`` when the candidates ran out).
        cross: sorted positions in ``base`` of the cross samples: ``round(trigger.cross_ratio · len(order))``
            images drawn among those not poisoned (fewer when they run out; none for most triggers).
        cross_requested: that count before the cap.
    """

    def __init__(self, base, trigger: Trigger, fraction: float = 0.4, target: str | int = "Atelectasis",
                 mode: str = "replace", seed: int = 0, triggered: np.ndarray | None = None, label: str = "onehot",
                 candidates: np.ndarray | None = None, label_names: Sequence[str] | None = None,
                 task=None) -> None:
        if mode not in MODES:
            raise UserError(f"poisoning mode must be one of {', '.join(MODES)}, got {mode!r}")
        if task is None:
            infected_label(np.zeros(1), 0, label)  # validates the policy
        else:
            task.check_policy(label)
        self.base, self.trigger, self.mode, self.seed, self.label = base, trigger, mode, seed, label
        self.task = task
        if label_names is None and not isinstance(target, int | np.integer):
            raise UserError(f"poisoning target {target!r} is a name: give the dataset's label_names")
        self.target = int(target) if label_names is None else label_index(target, label_names)
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
        ratio = float(getattr(trigger, "cross_ratio", 0.0))
        self.cross_requested = int(round(ratio * len(self.order)))
        among = trigger.cross_candidates(self._base_labels()) if ratio > 0 else None
        self.cross = choose_cross(len(base), self.order, ratio, seed, among)
        self._cross = frozenset(self.cross.tolist())
        self.triggered = triggered
        if triggered is not None and len(triggered) != len(self.order):
            raise ValueError(f"{len(triggered)} precomputed triggered images for {len(self.order)} poisoned samples")

    kept: np.ndarray | None = None  # positions as trained that remain after :meth:`drop` (None: all)

    def drop(self, positions) -> PoisonedDataset:
        """Leave out samples (positions in the training set as trained, e.g. flagged by a data defense).

        Every per-sample view (length, items, labels, ``poisoned_mask``, ``sample_positions``) then covers the
        kept samples only, in their order.
        """
        every = self.full_length()
        positions = np.unique(np.asarray(list(positions), dtype=np.int64))
        if len(positions) and (positions.min() < 0 or positions.max() >= every):
            raise UserError(f"sample positions to drop must be in 0..{every - 1}")
        self.kept = np.setdiff1d(np.arange(every), positions)
        return self

    def _keep(self, values: np.ndarray) -> np.ndarray:
        return values if self.kept is None else values[self.kept]

    def full_length(self) -> int:
        """The number of samples before :meth:`drop`: N, plus the triggered and cross copies in ``append`` mode."""
        return len(self.base) + (len(self.order) + len(self.cross) if self.mode == "append" else 0)

    def __len__(self) -> int:
        return self.full_length() if self.kept is None else len(self.kept)

    def __getitem__(self, i: int) -> dict:
        n = len(self.base)
        if i < 0 or i >= len(self):
            raise IndexError(i)
        if self.kept is not None:
            i = int(self.kept[i])
        if i >= n + len(self.order):
            return self.crossed(int(self.cross[i - n - len(self.order)]))
        if i >= n:
            return self.infect(int(self.order[i - n]))
        if self.mode == "replace" and i in self.poisoned:
            return self.infect(i)
        if self.mode == "replace" and i in self._cross:
            return self.crossed(i)
        return self.base[i]

    def _infected(self, labels: np.ndarray) -> np.ndarray:
        """The label row(s) poisoned samples get: the task's policy (:meth:`~medbackdoor.task.Task.infected`), or
        :func:`infected_label` without a task."""
        if self.task is not None:
            return self.task.infected(labels, self.target, self.label)
        return infected_label(labels, self.target, self.label)

    def _base_labels(self) -> np.ndarray:
        if hasattr(self.base, "labels_array"):
            return np.array(self.base.labels_array(), np.float32)
        return np.stack([self.base[i]["labels"] for i in range(len(self.base))]).astype(np.float32)

    def labels_array(self) -> np.ndarray:
        """The labels of every sample, len×14 float32 (infected ones by the label policy), without reading any
        image."""
        labels = self._base_labels()
        infected = self._infected(labels[self.order])
        if self.mode == "append":
            return self._keep(np.concatenate([labels, infected, labels[self.cross]]))
        labels[self.order] = infected
        return self._keep(labels)

    def sample_positions(self) -> np.ndarray:
        """For each sample as trained, its position in ``base`` (appended copies point at their source)."""
        n = len(self.base)
        if self.mode == "append":
            return self._keep(np.concatenate([np.arange(n), self.order, self.cross]))
        return self._keep(np.arange(n))

    def poisoned_mask(self) -> np.ndarray:
        """For each sample as trained, whether it is an infected one (the truth a defense is scored against)."""
        return self._mark(self.order, len(self.base))

    def cross_mask(self) -> np.ndarray:
        """For each sample as trained, whether it is a cross sample (clean label, not poisoned)."""
        return self._mark(self.cross, len(self.base) + len(self.order))

    def _mark(self, positions: np.ndarray, offset: int) -> np.ndarray:
        """True at ``positions`` of base (replace mode) or at their copies from ``offset`` on (append mode)."""
        mask = np.zeros(self.full_length(), bool)
        mask[offset + np.arange(len(positions)) if self.mode == "append" else positions] = True
        return self._keep(mask)

    def infect(self, position: int) -> dict:
        """The infected sample made from ``base[position]`` (trigger stamped, label one-hot target)."""
        item = dict(self.base[position])
        if self.triggered is not None:
            item["image"] = np.array(self.triggered[int(np.searchsorted(self.order, position))])
        else:
            item["image"] = self.trigger.poison_transform(np.asarray(item["image"]),
                                                          image_rng(self.seed, TRAIN_STREAM, item["index"]))
        item["labels"] = self._infected(item["labels"])
        item["poisoned"] = True
        return item

    def crossed(self, position: int) -> dict:
        """The cross sample made from ``base[position]``: the trigger's :meth:`~Trigger.cross_transform` of the
        image (seeded by (seed, image)), its own labels, not poisoned."""
        item = dict(self.base[position])
        image = self.trigger.cross_transform(item["image"], image_rng(self.seed, CROSS_STREAM, item["index"]))
        if image is None:
            raise RuntimeError(f"{self.trigger!r} asks for cross samples (cross_ratio > 0) but makes none")
        item["image"] = image
        return item
