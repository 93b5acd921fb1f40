"""``nih-sample``: 1,617 real NIH ChestX-ray14 radiographs bundled with the package, so runs need no download.

The images and labels are NIH's own (see :class:`NIHSample`); the asset ``assets/nih_sample.npz`` is built by
``tools/build_nih_sample.py`` from two public subsets of the release.
"""

from __future__ import annotations

import functools
import hashlib
import zipfile
from importlib import resources
from pathlib import Path

import numpy as np

from medbackdoor.data.base import ChestXrayDataset, split_by_patient
from medbackdoor.errors import UserError
from medbackdoor.labels import LABELS, NUM_CLASSES

ASSET = "assets/nih_sample.npz"
SIZE = 64
KEYS = ("images", "names", "labels", "patients", "source")


def asset_path() -> Path:
    """Where the bundled array file is (next to this module, in ``assets/``)."""
    return Path(str(resources.files("medbackdoor.data").joinpath(ASSET)))


def load_asset(path: str | Path | None = None) -> dict[str, np.ndarray]:
    """The arrays of the bundled file (``path`` overrides it), read once per process, checked for keys, shapes
    and dtypes, plus ``pixel_hash`` (a short SHA-256 of the images). The arrays are shared between callers and
    read-only.

    Raises:
        UserError: the file is missing, unreadable, not an ``.npz`` without pickles, or has the wrong content.
    """
    return _load(str(path if path is not None else asset_path()))


@functools.lru_cache(maxsize=2)
def _load(path: str) -> dict[str, np.ndarray]:
    fix = "reinstall medbackdoor or rebuild it with tools/build_nih_sample.py"
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise UserError(f"nih-sample asset {path} is missing; {fix}") from None
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"nih-sample asset {path} is unreadable ({reason}); {fix}") from None
    lacking = [k for k in KEYS if k not in data]
    if lacking:
        raise UserError(f"nih-sample asset {path} lacks {', '.join(lacking)}; {fix}")
    n = len(data["names"])
    expected = {"images": ((n, SIZE, SIZE), np.uint8), "labels": ((n, NUM_CLASSES), np.float32)}
    for key, (shape, dtype) in expected.items():
        if data[key].shape != shape or data[key].dtype != dtype:
            raise UserError(f"nih-sample asset {path}: {key} is {data[key].dtype} {data[key].shape}, "
                            f"expected {np.dtype(dtype)} {shape}; {fix}")
    for key in ("patients", "source"):
        if data[key].shape != (n,):
            raise UserError(f"nih-sample asset {path}: {key} has shape {data[key].shape}, expected ({n},); {fix}")
    for array in data.values():
        array.setflags(write=False)
    data["pixel_hash"] = np.array(hashlib.sha256(np.ascontiguousarray(data["images"]).tobytes()).hexdigest()[:16])
    return data


PARTS = ("all", "tune", "eval")
TUNE_FRACTION = 0.25
PART_SEED = 20261207


def part_rows(patients: np.ndarray, part: str) -> np.ndarray:
    """The asset rows of ``part``: all, or the patient-disjoint ``tune`` (about :data:`TUNE_FRACTION` of the
    images, whole patients drawn with :data:`PART_SEED`) or ``eval`` (the others)."""
    if part == "all":
        return np.arange(len(patients))
    parts = split_by_patient(patients, {"tune": TUNE_FRACTION}, PART_SEED)
    return np.flatnonzero(parts == "tune") if part == "tune" else np.flatnonzero(parts != "tune")


class NIHSample(ChestXrayDataset):
    """1,617 real NIH ChestX-ray14 radiographs (881 patients) bundled with the package as 64×64 8-bit gray.

    Real pixels and NIH's own labels with no download: 996 images of 264 patients (several studies each) from
    the 64 px ``NIH1000`` teaching subset, and 621 images (one per patient, all 14 findings) from the
    ``starter_images`` of J. Zech's CheXNet reproduction, shrunk from 256 px by 4×4 area averaging. Labels are
    NIH's NLP-mined ``Finding Labels`` (with their known errors); about 37% of images are "No Finding", far
    fewer than the 54% of the full release, so prevalence here says nothing about ChestX-ray14 as a whole.

    Images are 64 px: use ``image_size`` ≤ 64 (at 64 the preprocessing keeps the stored pixels; a larger size
    would only upsample). Splits are by patient (no patient in two splits), seeded.

    Attribution: the images come from the NIH Clinical Center ChestX-ray14 release
    (https://nihcc.app.box.com/v/ChestXray-NIHCC), which allows unrestricted use and asks for a link to that
    site, an acknowledgement of the NIH Clinical Center and a citation of: Wang X., Peng Y., Lu L., Lu Z.,
    Bagheri M., Summers R. M. "ChestX-ray8: Hospital-scale Chest X-ray Database and Benchmarks on
    Weakly-Supervised Classification and Localization of Common Thorax Diseases." CVPR 2017.

    Args:
        root: unused (accepted so every dataset takes the same arguments).
        val_fraction: share of images (whole patients) in the validation split.
        test_fraction: share of images (whole patients) in the test split.
        seed: seeds the patient split and ``limit``.
        limit: keep at most this many images per split (a seeded subset), for quick runs.
        part: ``all`` (every image), or one of two patient-disjoint parts: ``tune`` (about
            :data:`TUNE_FRACTION` of the images, whole patients, drawn once with :data:`PART_SEED` whatever
            ``seed`` is) or ``eval`` (the rest). The benchmark chooses its defaults on ``tune`` and evaluates on
            ``eval``, so no evaluation image (or patient) is ever a tuning one.

    Attributes:
        source: which subset each image came from (``nih1000-64`` or ``nih-real-sample``).
    """

    name = "nih-sample"
    label_names = LABELS

    @classmethod
    def example(cls, root) -> dict:
        """No files: the bundled radiographs, a few per split."""
        return {"limit": 12}

    def __init__(self, root: str | None = None, val_fraction: float = 0.1, test_fraction: float = 0.2,
                 seed: int = 0, limit: int | None = None, part: str = "all") -> None:
        if val_fraction + test_fraction >= 1.0:
            raise UserError(f"nih-sample val_fraction + test_fraction must be below 1, "
                            f"got {val_fraction} + {test_fraction}")
        if part not in PARTS:
            raise UserError(f"nih-sample part must be one of {', '.join(PARTS)}, got {part!r}")
        self.asset = str(asset_path())
        data = load_asset(self.asset)
        self.seed, self.val_fraction, self.test_fraction, self.part = seed, val_fraction, test_fraction, part
        keep = part_rows(data["patients"], part)
        keep, labels = self._select(keep, data["labels"][keep])
        names, patients = data["names"][keep], data["patients"][keep]
        splits = split_by_patient(patients, {"test": test_fraction, "val": val_fraction}, seed)
        self._set_table(names, labels, patients, splits, limit, seed)
        row_of = {name: i for i, name in enumerate(data["names"].tolist())}
        self._rows = np.array([row_of[n] for n in self.names], dtype=np.int64)
        self.source = data["source"][self._rows].astype(str)

    def _select(self, rows: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The asset rows this dataset keeps of ``rows`` (a part's) and their label rows: all of them, as NIH
        labels them."""
        return rows, labels

    def read_source(self, index: int) -> np.ndarray:
        return load_asset(self.asset)["images"][self._rows[index]].copy()

    def source_fingerprint(self) -> dict:
        return {"dataset": self.name, "pixels": str(load_asset(self.asset)["pixel_hash"]), "size": SIZE}


# the single-label classes: "No Finding" and every finding that is the only one of at least 40 bundled images
SINGLE_CLASSES = ("No Finding", "Infiltration", "Effusion", "Atelectasis", "Cardiomegaly", "Emphysema",
                  "Pneumothorax", "Nodule")
SINGLE_TASKS = ("multiclass", "binary")


class NIHSampleSingle(NIHSample):
    """A single-label task of real pixels, derived from the bundled radiographs (:class:`NIHSample`).

    ``task: multiclass`` (8 classes): the images NIH labels with no finding or with exactly one finding, where
    that finding is the only one of at least 40 bundled images: "No Finding" and Infiltration, Effusion,
    Atelectasis, Cardiomegaly, Emphysema, Pneumothorax, Nodule (1,004 of the 1,617 images; the counts per class
    and part are in docs/data.md). ``task: binary``: every image, "No Finding" against "Finding"
    (any of the 14). Images, patients, parts and splits are as in ``nih-sample`` (splits by patient, seeded, over
    the images kept). The labels are NIH's NLP-mined ones, with their errors; the attribution is ``nih-sample``'s.

    Args:
        task: ``multiclass`` or ``binary``; every other argument is :class:`NIHSample`'s.
    """

    name = "nih-sample-single"
    task_kind = "multiclass"
    label_names = SINGLE_CLASSES

    def __init__(self, root: str | None = None, val_fraction: float = 0.1, test_fraction: float = 0.2,
                 seed: int = 0, limit: int | None = None, part: str = "all", task: str = "multiclass") -> None:
        if task not in SINGLE_TASKS:
            raise UserError(f"nih-sample-single task must be one of {', '.join(SINGLE_TASKS)}, got {task!r}")
        self.task_kind = task
        self.label_names = SINGLE_CLASSES if task == "multiclass" else ("No Finding", "Finding")
        super().__init__(root, val_fraction, test_fraction, seed, limit, part)

    def _select(self, rows: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        count = labels.sum(1)
        if self.task_kind == "binary":
            return rows, np.eye(2, dtype=np.float32)[(count > 0).astype(int)]
        findings = [LABELS.index(name) for name in SINGLE_CLASSES[1:]]
        single = (count == 1)[:, None] & (labels[:, findings] == 1)
        kept = (count == 0) | single.any(1)
        classes = np.where(count == 0, 0, single.argmax(1) + 1)[kept]
        return rows[kept], np.eye(len(SINGLE_CLASSES), dtype=np.float32)[classes]
