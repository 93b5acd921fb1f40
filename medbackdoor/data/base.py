"""The dataset base: a table of images (labels, patients, splits) with one hook that reads a source image."""

from __future__ import annotations

import hashlib
import json
import os
from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np

from medbackdoor.errors import UserError

SPLITS = ("train", "val", "test")


class ChestXrayDataset(ABC):
    """A medical-imaging dataset (multi-label chest X-ray by default): N images, their labels, patient ids and
    split names.

    A dataset declares its label names (:attr:`label_names`; the ChestX-ray14 family declares
    :data:`medbackdoor.labels.LABELS`); the model head, the poisoning target (by name), the metrics, reports and
    Grad-CAM follow them. A dataset that declares none is refused (there is no default set of labels).

    Subclasses fill the table in ``__init__`` (by calling :meth:`_set_table`) and override one hook,
    :meth:`read_source`, which returns the source-resolution image as H×W uint8 (gray) or 3×H×W uint8 (RGB, for a
    dataset whose :attr:`channels` is 3). Everything else (the
    preprocessing cache, poisoning, training) works on any subclass.

    Attributes:
        names: image identifiers (file names for NIH), length N.
        label_names: the label columns, in order (a class attribute or set in ``__init__``).
        labels: N×L float32 in {0, 1}, or NaN where a label is unknown (the loss and every metric ignore those):
            multi-hot rows, or one-hot rows for a single-label :attr:`task_kind`.
        patients: patient id per image, length N (strings).
        splits: split name per image (``train``, ``val`` or ``test``).
        missing: images the dataset lists but could not find.
    """

    name: ClassVar[str] = ""
    label_names: tuple[str, ...] = ()
    # False where the release has no patient ids (each image is its own pseudo-patient): the overlap between
    # splits is then 0 by construction and reported as unknown (None), not as checked
    has_patient_ids: ClassVar[bool] = True
    # the task type (:mod:`medbackdoor.task`): ``multilabel`` (multi-hot label rows), ``multiclass`` or ``binary``
    # (one-hot label rows: exactly one 1, or a row of NaN where the class is unknown)
    task_kind: ClassVar[str] = "multilabel"
    # colour channels of every image: 1 (gray; :meth:`read_source` returns H×W uint8) or 3 (RGB; it returns
    # 3×H×W uint8, channel first, so the spatial axes are always the last two). A dataset may set it per instance.
    channels: int = 1
    missing: int = 0

    @property
    def task(self):
        """The :class:`~medbackdoor.task.Task` of this dataset's :attr:`task_kind` over its label names."""
        from medbackdoor.task import task_of

        return task_of(self.task_kind, self.label_names)

    def _set_table(self, names, labels, patients, splits, limit: int | None = None, seed: int = 0) -> None:
        names, patients, splits = (np.asarray(a).astype(str) for a in (names, patients, splits))
        labels = np.asarray(labels, dtype=np.float32)
        self.label_names = tuple(str(n) for n in self.label_names)
        if not self.label_names:
            raise UserError(f"{self.name or type(self).__name__}: the dataset declares no label_names (its label "
                            "columns, in order)")
        if len(set(self.label_names)) != len(self.label_names):
            raise UserError(f"{self.name}: label names must be distinct, got {list(self.label_names)}")
        width = len(self.label_names)
        if labels.shape != (len(names), width):
            raise UserError(f"{self.name}: label array has shape {labels.shape}, expected ({len(names)}, {width})")
        self.task.check_labels(labels, f"{self.name}: labels")
        bad = sorted(set(splits) - set(SPLITS))
        if bad:
            raise UserError(f"{self.name}: unknown split names {bad}")
        keep = np.arange(len(names))
        if limit is not None:
            keep = _limit_per_split(splits, limit, seed)
        self.names, self.labels = names[keep], labels[keep]
        self.patients, self.splits = patients[keep], splits[keep]

    def __len__(self) -> int:
        return len(self.names)

    @abstractmethod
    def read_source(self, index: int) -> np.ndarray:
        """The source-resolution image ``index``: H×W uint8, or 3×H×W uint8 when :attr:`channels` is 3 (the one
        hook to override)."""

    @classmethod
    def example(cls, root) -> dict:
        """Write a miniature copy of this dataset under the folder ``root`` (tens of images, laid out as the real
        release is) and return the options that load it (``create_dataset(name, **options)``).

        Every registered dataset gives one: the registry's conformance tests build each dataset from it, so a new
        dataset is tested by being registered, and a user can see the layout a dataset expects."""
        raise NotImplementedError(f"{cls.__name__} gives no example; override ChestXrayDataset.example")

    @classmethod
    def present(cls, root=None, **options) -> bool:
        """Whether this dataset's files are on this machine for these options (``root`` and the constructor's
        options), without downloading or reading them. True by default (bundled or generated data, or a dataset
        that cannot tell); a sweep with ``present_data: true`` runs only the datasets that are present."""
        return True

    @abstractmethod
    def source_fingerprint(self) -> dict:
        """What identifies the source pixels (files, sizes, generator version): the cache key is built on it."""

    def fingerprint(self) -> str:
        """A short hash of the source and of the table (names, labels, splits)."""
        h = hashlib.sha256(json.dumps(self.source_fingerprint(), sort_keys=True).encode())
        for arr in (self.names, self.splits, self.patients):
            h.update("\n".join(arr.tolist()).encode())
        h.update(np.ascontiguousarray(self.labels).tobytes())
        return h.hexdigest()[:16]

    def split_indices(self, split: str) -> np.ndarray:
        if split not in SPLITS:
            raise UserError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        return np.flatnonzero(self.splits == split)

    def summary(self) -> dict:
        """Counts per split, patient overlap between splits and label prevalence (images per class for a
        single-label task), the task type and the channels, as plain JSON types."""
        splits = {}
        for split in SPLITS:
            idx = self.split_indices(split)
            splits[split] = {
                "images": int(len(idx)),
                "patients": int(len(set(self.patients[idx]))),
                "positives": dict(zip(self.label_names, np.nansum(self.labels[idx], 0).astype(int).tolist())),
                "unknown": dict(zip(self.label_names, np.isnan(self.labels[idx]).sum(0).astype(int).tolist())),
            }
        return {
            "dataset": self.name,
            "images": len(self),
            "splits": splits,
            "missing": int(self.missing),
            "labels": list(self.label_names),
            "task": self.task_kind,
            "channels": int(self.channels),
            "patient_overlap": patient_overlap(self.patients, self.splits) if self.has_patient_ids else None,
        }


class ImageFileDataset(ChestXrayDataset):
    """A dataset whose source images are files on disk (``self._paths``, one per row of the table, in order)."""

    _paths: list

    def read_source(self, index: int) -> np.ndarray:
        from medbackdoor.data.preprocess import read_image8

        return read_image8(self._paths[index], self.channels)

    def path(self, index: int):
        return self._paths[index]

    def file_stats(self, names) -> list[list]:
        """``[name, size, mtime_ns]`` of every image file: the part of the fingerprint that sees pixels change."""
        return [[n, s.st_size, s.st_mtime_ns] for n, s in zip(names, (os.stat(p) for p in self._paths))]


def write_example_images(paths, size: int = 40, seed: int = 0) -> None:
    """Small random images at ``paths`` (PNG or JPEG by suffix), in the odd formats releases hold: every third RGB,
    every fifth PNG RGBA, the rest 8-bit gray."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i, path in enumerate(paths):
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, size=(size, size), dtype=np.uint8)
        if i % 3 == 1:
            img = Image.fromarray(np.stack([pixels] * 3, -1), "RGB")
        elif i % 5 == 2 and path.suffix == ".png":
            img = Image.fromarray(np.dstack([pixels] * 3 + [np.full_like(pixels, 255)]), "RGBA")
        else:
            img = Image.fromarray(pixels, "L")
        img.save(path)


def patient_overlap(patients: np.ndarray, splits: np.ndarray) -> int:
    """Number of patients that appear in more than one split."""
    sets = [set(patients[splits == s]) for s in SPLITS]
    return len((sets[0] & sets[1]) | (sets[0] & sets[2]) | (sets[1] & sets[2]))


def _limit_per_split(splits: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """At most ``limit`` images per split, a seeded random subset kept in table order."""
    if limit < 1:
        raise UserError(f"dataset.limit must be at least 1, got {limit}")
    rng = np.random.default_rng([seed, 7])
    keep = []
    for split in SPLITS:
        idx = np.flatnonzero(splits == split)
        if len(idx) > limit:
            idx = np.sort(rng.choice(idx, size=limit, replace=False))
        keep.append(idx)
    return np.sort(np.concatenate(keep))


def split_by_patient(patients: np.ndarray, fractions: dict[str, float], seed: int) -> np.ndarray:
    """Assign whole patients to splits so each split gets about ``fraction`` of the images.

    Patients are shuffled with ``np.random.default_rng(seed)``; each named split in turn takes patients until
    its share of images is reached; the rest go to ``train``. No patient lands in two splits.
    """
    for name, frac in fractions.items():
        if not 0.0 <= frac < 1.0:
            raise UserError(f"{name} fraction must be in [0, 1), got {frac}")
    uniq, inverse, counts = np.unique(patients, return_inverse=True, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(uniq))
    assign = np.full(len(uniq), "train", dtype=object)
    cursor, n = 0, len(patients)
    for name, frac in fractions.items():
        want, got = round(frac * n), 0
        while got < want and cursor < len(order):
            assign[order[cursor]] = name
            got += counts[order[cursor]]
            cursor += 1
    return assign[inverse].astype(str)
