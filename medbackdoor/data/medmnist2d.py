"""The single-label 2D MedMNIST datasets: ``pathmnist``, ``dermamnist``, ``octmnist``, ``pneumoniamnist``,
``retinamnist``, ``breastmnist``, ``bloodmnist``, ``tissuemnist``, ``organamnist``, ``organcmnist``, ``organsmnist``.

MedMNIST v2 (Yang et al., "MedMNIST v2 - A large-scale lightweight benchmark for 2D and 3D biomedical image
classification", Scientific Data 10, 41, 2023) repackages public biomedical image collections as small uint8
arrays with fixed train/val/test splits; MedMNIST+ (Doerrich et al., "Rethinking model prototyping through the
MedMNIST+ dataset collection", arXiv:2404.15786) adds 64, 128 and 224 px versions of the 2D flags. Each flag is
registered here under its MedMNIST name (``dataset.name=dermamnist``); the multi-label ``chestmnist`` has its own
module (:mod:`medbackdoor.data.chestmnist`, whose file machinery this one shares).

Every flag at a glance (task as read here; train / val / test images; licence)::

    flag             task                          classes  channels  train / val / test         licence
    pathmnist        multiclass                    9        3 (RGB)   89,996 / 10,004 / 7,180    CC BY 4.0
    dermamnist       multiclass                    7        3 (RGB)   7,007 / 1,003 / 2,005      CC BY-NC 4.0
    octmnist         multiclass                    4        1         97,477 / 10,832 / 1,000    CC BY 4.0
    pneumoniamnist   binary                        2        1         4,708 / 524 / 624          CC BY 4.0
    retinamnist      multiclass (ordinal grades)   5        3 (RGB)   1,080 / 120 / 400          CC BY 4.0
    breastmnist      binary                        2        1         546 / 78 / 156             CC BY 4.0
    bloodmnist       multiclass                    8        3 (RGB)   11,959 / 1,712 / 3,421     CC BY 4.0
    tissuemnist      multiclass                    8        1         165,466 / 23,640 / 47,280  CC BY 4.0
    organamnist      multiclass                    11       1         34,561 / 6,491 / 17,778    CC BY 4.0
    organcmnist      multiclass                    11       1         12,975 / 2,392 / 8,216     CC BY 4.0
    organsmnist      multiclass                    11       1         13,932 / 2,452 / 8,827     CC BY 4.0

The classes, in MedMNIST's index order (the label names here; :data:`MEDMNIST_2D` holds MedMNIST's own):

* pathmnist (colorectal cancer histology, H&E): adipose, background, debris, lymphocytes, mucus, smooth muscle,
  normal colon mucosa, cancer-associated stroma, colorectal adenocarcinoma epithelium.
* dermamnist (dermatoscopy): actinic keratoses and intraepithelial carcinoma, basal cell carcinoma, benign
  keratosis-like lesions, dermatofibroma, melanoma, melanocytic nevi, vascular lesions.
* octmnist (retinal OCT): choroidal neovascularization, diabetic macular edema, drusen, normal.
* pneumoniamnist (paediatric chest X-ray): normal, pneumonia.
* retinamnist (fundus photographs): ``grade 0`` ... ``grade 4``, the diabetic-retinopathy severity grades MedMNIST
  calls ``0`` ... ``4``. MedMNIST poses an ordinal regression; here it is a 5-class multiclass task (softmax,
  cross-entropy), and the order of the grades is not used.
* breastmnist (breast ultrasound): malignant, "normal, benign" (MedMNIST merged normal and benign).
* bloodmnist (blood cell microscopy): basophil, eosinophil, erythroblast, immature granulocytes(myelocytes,
  metamyelocytes and promyelocytes), lymphocyte, monocyte, neutrophil, platelet.
* tissuemnist (kidney cortex cell microscopy): Collecting Duct, Connecting Tubule; Distal Convoluted Tubule;
  Glomerular endothelial cells; Interstitial endothelial cells; Leukocytes; Podocytes; Proximal Tubule Segments;
  Thick Ascending Limb.
* organamnist / organcmnist / organsmnist (abdominal CT, axial / coronal / sagittal): bladder, femur-left,
  femur-right, heart, kidney-left, kidney-right, liver, lung-left, lung-right, pancreas, spleen.

Label names are MedMNIST's (stripped of surrounding spaces; ``grade `` prepended for retinamnist), taken from
``medmnist.INFO[flag]`` when the ``medmnist`` package is importable, else from the copy in :data:`MEDMNIST_2D`
(medmnist 3.0.2's INFO; ``tests/test_medmnist2d.py`` checks it against the installed package). The same goes for
the task type and the channel count. A target class is named as written (``trigger.target=melanoma``,
``trigger.target="grade 4"``), case-insensitively.

Layout under ``root`` (default ``~/.medmnist``, the folder the ``medmnist`` package uses), one file per size::

    dermamnist.npz        28 px   (MedMNIST v2)
    dermamnist_64.npz     64 px   (MedMNIST+)
    dermamnist_128.npz   128 px
    dermamnist_224.npz   224 px

Each file is a NumPy ``.npz`` with ``train_images``, ``val_images``, ``test_images`` (N×S×S uint8 for a gray flag,
where an extra trailing channel of 1 is accepted; N×S×S×3 uint8, channel last, for a colour flag) and
``train_labels``, ``val_labels``, ``test_labels`` (N×1 integer class indices in 0..C-1). Labels become one-hot
float32 rows; a file with labels out of range, of another shape or dtype, a missing key or a pickled (object)
member is refused with one line. :meth:`MedMNIST2D.read_source` returns H×W uint8 for a gray flag and 3×H×W uint8
(channel first) for a colour one (``channels`` is 1 or 3). Images are named ``<split>_<row>`` (``train_000123`` is
row 123 of ``train_images``); the splits are kept as given. Reading, memory-mapping, unpacking of compressed members
(into ``unpack_dir``, default ``<medbackdoor cache>/<flag>``) and the download (``medmnist.INFO``'s URL, checked
against its MD5) are :mod:`medbackdoor.data.chestmnist`'s.

Caveats, none of which the toolkit can check:

* MedMNIST has no patient ids: each image is its own pseudo-patient, so ``patient_overlap`` is reported as None
  (unknown). MedMNIST's splits follow the sources where they have one (OCT, pneumonia and retina: the source's
  training set split 9:1 into train/val, its validation set as test; PathMNIST: NCT-CRC-HE-100K split 9:1,
  CRC-VAL-HE-7K from another centre as test; the organ flags: by CT scan, 115/16/70 scans); the others are a 7:1:2
  split of the images (DermaMNIST, BreastMNIST, BloodMNIST, TissueMNIST). HAM10000, DermaMNIST's source, holds
  several images of some lesions, so a lesion may appear in two splits.
* Images were centre-cropped and downsized by MedMNIST; labels are the sources' (with their errors).

**Licences and citation.** The MedMNIST files are CC BY 4.0, except DermaMNIST, which is CC BY-NC 4.0 (no
commercial use; HAM10000's licence). Cite MedMNIST v2 (and MedMNIST+ for the 64/128/224 px files) and each source
dataset you use (:data:`SOURCES`): users must cite the source of every flag they use.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

import numpy as np

from medbackdoor.data.base import ChestXrayDataset
from medbackdoor.data.chestmnist import DEFAULT_SIZE, MappedSplits, file_name, medmnist_info, member_header, open_npz
from medbackdoor.errors import UserError

_ORGANS = ("bladder", "femur-left", "femur-right", "heart", "kidney-left", "kidney-right", "liver", "lung-left",
           "lung-right", "pancreas", "spleen")

# ``medmnist.INFO[flag]``'s task, labels (in index order), channels, split sizes and licence, as of medmnist 3.0.2
# (used when medmnist is absent; tests/test_medmnist2d.py checks it against the installed package).
MEDMNIST_2D: dict[str, dict] = {
    "pathmnist": {
        "task": "multi-class", "n_channels": 3, "license": "CC BY 4.0",
        "n_samples": {"train": 89996, "val": 10004, "test": 7180},
        "label": ("adipose", "background", "debris", "lymphocytes", "mucus", "smooth muscle", "normal colon mucosa",
                  "cancer-associated stroma", "colorectal adenocarcinoma epithelium")},
    "dermamnist": {
        "task": "multi-class", "n_channels": 3, "license": "CC BY-NC 4.0",
        "n_samples": {"train": 7007, "val": 1003, "test": 2005},
        "label": ("actinic keratoses and intraepithelial carcinoma", "basal cell carcinoma",
                  "benign keratosis-like lesions", "dermatofibroma", "melanoma", "melanocytic nevi",
                  "vascular lesions")},
    "octmnist": {
        "task": "multi-class", "n_channels": 1, "license": "CC BY 4.0",
        "n_samples": {"train": 97477, "val": 10832, "test": 1000},
        "label": ("choroidal neovascularization", "diabetic macular edema", "drusen", "normal")},
    "pneumoniamnist": {
        "task": "binary-class", "n_channels": 1, "license": "CC BY 4.0",
        "n_samples": {"train": 4708, "val": 524, "test": 624},
        "label": ("normal", "pneumonia")},
    "retinamnist": {
        "task": "ordinal-regression", "n_channels": 3, "license": "CC BY 4.0",
        "n_samples": {"train": 1080, "val": 120, "test": 400},
        "label": ("0", "1", "2", "3", "4")},
    "breastmnist": {
        "task": "binary-class", "n_channels": 1, "license": "CC BY 4.0",
        "n_samples": {"train": 546, "val": 78, "test": 156},
        "label": ("malignant", "normal, benign")},
    "bloodmnist": {
        "task": "multi-class", "n_channels": 3, "license": "CC BY 4.0",
        "n_samples": {"train": 11959, "val": 1712, "test": 3421},
        "label": ("basophil", "eosinophil", "erythroblast",
                  "immature granulocytes(myelocytes, metamyelocytes and promyelocytes)", "lymphocyte", "monocyte",
                  "neutrophil", "platelet")},
    "tissuemnist": {
        "task": "multi-class", "n_channels": 1, "license": "CC BY 4.0",
        "n_samples": {"train": 165466, "val": 23640, "test": 47280},
        "label": ("Collecting Duct, Connecting Tubule", "Distal Convoluted Tubule", "Glomerular endothelial cells",
                  "Interstitial endothelial cells", "Leukocytes", "Podocytes", "Proximal Tubule Segments",
                  "Thick Ascending Limb")},
    "organamnist": {
        "task": "multi-class", "n_channels": 1, "license": "CC BY 4.0",
        "n_samples": {"train": 34561, "val": 6491, "test": 17778}, "label": _ORGANS},
    "organcmnist": {
        "task": "multi-class", "n_channels": 1, "license": "CC BY 4.0",
        "n_samples": {"train": 12975, "val": 2392, "test": 8216}, "label": _ORGANS},
    "organsmnist": {
        "task": "multi-class", "n_channels": 1, "license": "CC BY 4.0",
        "n_samples": {"train": 13932, "val": 2452, "test": 8827}, "label": _ORGANS},
}
FLAGS = tuple(MEDMNIST_2D)

_LITS = ("Bilic et al., 'The Liver Tumor Segmentation Benchmark (LiTS)', Medical Image Analysis 84, 102680, 2023; "
         "Xu et al., 'Efficient multiple organ localization in CT image using 3D region proposal network', "
         "IEEE TMI 38(8), 1885-1898, 2019")
_KERMANY = ("Kermany et al., 'Identifying medical diagnoses and treatable diseases by image-based deep learning', "
            "Cell 172(5), 1122-1131, 2018")
# the source dataset(s) of each flag, which MedMNIST asks its users to cite alongside MedMNIST itself
SOURCES: dict[str, str] = {
    "pathmnist": "Kather et al., 'Predicting survival from colorectal cancer histology slides using deep learning: "
                 "a retrospective multicenter study', PLOS Medicine 16(1), e1002730, 2019 (NCT-CRC-HE-100K, "
                 "CRC-VAL-HE-7K)",
    "dermamnist": "Tschandl et al., 'The HAM10000 dataset, a large collection of multi-source dermatoscopic images "
                  "of common pigmented skin lesions', Scientific Data 5, 180161, 2018; Codella et al., 'Skin lesion "
                  "analysis toward melanoma detection 2018' (ISIC 2018), arXiv:1902.03368",
    "octmnist": _KERMANY,
    "pneumoniamnist": _KERMANY,
    "retinamnist": "Liu et al., 'DeepDRiD: Diabetic Retinopathy - Grading and Image Quality Estimation Challenge', "
                   "Patterns 3(6), 100512, 2022",
    "breastmnist": "Al-Dhabyani et al., 'Dataset of breast ultrasound images', Data in Brief 28, 104863, 2020",
    "bloodmnist": "Acevedo et al., 'A dataset of microscopic peripheral blood cell images for development of "
                  "automatic recognition systems', Data in Brief 30, 105474, 2020",
    "tissuemnist": "Ljosa et al., 'Annotated high-throughput microscopy image sets for validation', Nature Methods "
                   "9(7), 637, 2012 (BBBC051); Woloshuk et al., 'In situ classification of cell types in human "
                   "kidney tissue using 3D nuclear staining', Cytometry Part A 99(7), 707-721, 2021",
    "organamnist": _LITS,
    "organcmnist": _LITS,
    "organsmnist": _LITS,
}
# what MedMNIST calls each label, prefixed for the label names here (a bare digit reads as a class index)
LABEL_PREFIX = {"retinamnist": "grade "}


def facts(flag: str, info: dict | None = None) -> dict:
    """``flag``'s task, labels (a tuple in index order), channels, split sizes and licence: from ``info``
    (``medmnist.INFO[flag]``) where it has them, else from the copy :data:`MEDMNIST_2D`."""
    copy = dict(MEDMNIST_2D[flag])
    info = info or {}
    out = {key: info.get(key, value) for key, value in copy.items()}
    labels = out["label"]
    if isinstance(labels, dict):
        out["label"] = tuple(labels[str(i)] for i in range(len(labels)))
    return out


def label_names(flag: str, medmnist_labels) -> tuple[str, ...]:
    """The label names for MedMNIST's labels of ``flag``: stripped, ``grade `` prepended for retinamnist, and made
    distinct (a repeated name gets `` (2)``, `` (3)``, ...)."""
    prefix = LABEL_PREFIX.get(flag, "")
    names, seen = [], set()
    for raw in medmnist_labels:
        name = prefix + " ".join(str(raw).split())
        base, k = name, 1
        while name.lower() in seen:
            k += 1
            name = f"{base} ({k})"
        seen.add(name.lower())
        names.append(name)
    return tuple(names)


def task_kind(medmnist_task: str) -> str:
    """Our task type for MedMNIST's ``task``: ``binary`` for ``binary-class``, ``multiclass`` for ``multi-class`` and
    ``ordinal-regression`` (the grades as unordered classes).

    Raises:
        UserError: a multi-label task (that is ``chestmnist``) or one this module does not know.
    """
    kinds = {"binary-class": "binary", "multi-class": "multiclass", "ordinal-regression": "multiclass"}
    if medmnist_task not in kinds:
        raise UserError(f"medmnist task {medmnist_task!r} is not a single-label task this reader knows "
                        f"({', '.join(kinds)})")
    return kinds[medmnist_task]


def read_class_labels(flag: str, n_classes: int):
    """A ``read_labels`` for :func:`~medbackdoor.data.chestmnist.open_npz`: checks ``{split}_labels`` is N×1
    integer class indices in ``0..n_classes-1`` (from the ``.npy`` header first, so a pickled member is never
    loaded) and returns them as one-hot float32 rows."""

    def read(npz, path: Path, key: str) -> np.ndarray:
        shape, _, dtype = member_header(npz, key)
        if dtype.hasobject or dtype.kind not in "iu" or len(shape) != 2 or shape[1] != 1:
            raise UserError(f"{flag}: {path}: {key} is {dtype} {shape}, expected N×1 integer class indices "
                            f"(0..{n_classes - 1})")
        values = npz[key][:, 0]
        bad = (values < 0) | (values >= n_classes)
        if bad.any():
            raise UserError(f"{flag}: {path}: {key} has {int(bad.sum())} class indices outside 0..{n_classes - 1} "
                            f"(e.g. {values[bad][0]} in row {int(np.flatnonzero(bad)[0])})")
        return np.eye(n_classes, dtype=np.float32)[values.astype(np.int64)]

    return read


class MedMNIST2D(MappedSplits, ChestXrayDataset):
    """A single-label 2D MedMNIST flag at one size, from ``root`` (see the module docstring for the layout, the
    classes and the caveats). Each flag is a subclass (:class:`DermaMNIST`, ...) that sets :attr:`flag`.

    The label names, the task type (``binary`` or ``multiclass``) and the channel count (1: :meth:`read_source`
    gives H×W uint8; 3: 3×H×W uint8, RGB, channel first) come from ``medmnist.INFO[flag]`` when ``medmnist`` is
    importable, else from :data:`MEDMNIST_2D`; the class attributes hold the copy's. There are no patient ids, so
    :meth:`summary` reports ``patient_overlap`` as None (unknown), not 0.

    Args:
        root: folder holding ``{flag}.npz`` / ``{flag}_{size}.npz`` (default ``~/.medmnist``).
        size: 28, 64, 128 or 224 (pixels); picks the file.
        download: fetch the file with medmnist's URL and MD5 when it is not under ``root``.
        seed: seeds ``limit``.
        limit: keep at most this many images per split (a seeded subset), for quick runs.
        unpack_dir: where compressed image arrays are unpacked once for memory-mapping (default
            ``<medbackdoor cache>/<flag>``, i.e. under ``$MEDBACKDOOR_CACHE`` or ``~/.cache/medbackdoor``).

    Attributes:
        medmnist_labels: MedMNIST's own label names, in index order.
        license: the data licence (``CC BY 4.0``; ``CC BY-NC 4.0`` for DermaMNIST).
        source: the source dataset(s) to cite besides MedMNIST.
    """

    flag: ClassVar[str] = ""
    has_patient_ids = False
    license: str = ""
    source: str = ""

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if cls.flag:
            known = facts(cls.flag)
            cls.name = cls.flag
            cls.label_names = label_names(cls.flag, known["label"])
            cls.task_kind = task_kind(known["task"])
            cls.channels = int(known["n_channels"])
            cls.license = known["license"]
            cls.source = SOURCES[cls.flag]

    @classmethod
    def example(cls, root) -> dict:
        """A miniature ``{flag}.npz`` in MedMNIST's layout: 28 px random pixels (N×28×28, or N×28×28×3 for a
        colour flag), N×1 uint8 class indices with every class in train."""
        known = facts(cls.flag)
        n_classes, channels = len(known["label"]), int(known["n_channels"])
        rng = np.random.default_rng(0)
        arrays = {}
        for split, n in (("train", 2 * n_classes + 6), ("val", 8), ("test", 8)):
            shape = (n, 28, 28) if channels == 1 else (n, 28, 28, channels)
            arrays[f"{split}_images"] = rng.integers(0, 256, size=shape, dtype=np.uint8)
            labels = rng.integers(0, n_classes, size=(n, 1)).astype(np.uint8)
            if split == "train":
                labels[:n_classes, 0] = np.arange(n_classes)
            arrays[f"{split}_labels"] = labels
        folder = Path(root)
        folder.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(folder / file_name(28, cls.flag), **arrays)
        return {"root": str(folder), "size": 28, "download": False, "unpack_dir": str(folder / "unpacked")}

    def __init__(self, root: str | os.PathLike | None = None, size: int = DEFAULT_SIZE, download: bool = True,
                 seed: int = 0, limit: int | None = None, unpack_dir: str | os.PathLike | None = None) -> None:
        if not self.flag:
            raise UserError("MedMNIST2D is the base of the MedMNIST flags; create one of them: " + ", ".join(FLAGS))
        self._find_file(self.flag, root, size, download)
        known = facts(self.flag, medmnist_info(self.flag))
        self.medmnist_labels = tuple(str(n) for n in known["label"])
        self.label_names = label_names(self.flag, self.medmnist_labels)
        self.task_kind = task_kind(known["task"])
        self.channels = int(known["n_channels"])
        if self.channels not in (1, 3):
            raise UserError(f"{self.flag}: medmnist says {self.channels} channels; only 1 and 3 are read")
        self.license = known["license"]
        self._unpack_dir = Path(unpack_dir).expanduser() if unpack_dir is not None else None
        self._sources, labels = open_npz(self.path, self.size, self._unpack_dir, flag=self.flag,
                                         channels=self.channels,
                                         read_labels=read_class_labels(self.flag, len(self.label_names)))
        self._set_split_table(labels, limit, seed)

    def read_source(self, index: int) -> np.ndarray:
        image = self._split_array(self.splits[index])[self._rows[index]]
        if self.channels == 1:
            return np.array(image.reshape(self.size, self.size), dtype=np.uint8, order="C")
        return np.ascontiguousarray(np.moveaxis(image, -1, 0), dtype=np.uint8)  # S×S×3 → 3×S×S

    def source_fingerprint(self) -> dict:
        return {"dataset": self.name, "file": self._file_id, "size": self.size, "channels": self.channels,
                "medmnist_labels": list(self.medmnist_labels)}


class PathMNIST(MedMNIST2D):
    """``pathmnist``: colorectal cancer histology (NCT-CRC-HE-100K; CRC-VAL-HE-7K as test), 9 tissue classes, RGB."""

    flag = "pathmnist"


class DermaMNIST(MedMNIST2D):
    """``dermamnist``: dermatoscopic images of pigmented skin lesions (HAM10000), 7 classes, RGB. Licence CC BY-NC
    4.0: no commercial use."""

    flag = "dermamnist"


class OCTMNIST(MedMNIST2D):
    """``octmnist``: retinal optical coherence tomography (Kermany et al. 2018), 4 classes, gray."""

    flag = "octmnist"


class PneumoniaMNIST(MedMNIST2D):
    """``pneumoniamnist``: paediatric chest X-rays (Kermany et al. 2018), normal against pneumonia (binary), gray."""

    flag = "pneumoniamnist"


class RetinaMNIST(MedMNIST2D):
    """``retinamnist``: fundus photographs (DeepDRiD), diabetic-retinopathy grades ``grade 0`` ... ``grade 4``, RGB.
    MedMNIST's ordinal regression is read as a 5-class multiclass task (the grades' order is not used)."""

    flag = "retinamnist"


class BreastMNIST(MedMNIST2D):
    """``breastmnist``: breast ultrasound (Al-Dhabyani et al. 2020), malignant against "normal, benign" (binary),
    gray."""

    flag = "breastmnist"


class BloodMNIST(MedMNIST2D):
    """``bloodmnist``: peripheral blood cell microscopy (Acevedo et al. 2020), 8 cell types, RGB."""

    flag = "bloodmnist"


class TissueMNIST(MedMNIST2D):
    """``tissuemnist``: kidney cortex cells (BBBC051), 8 cell types, gray."""

    flag = "tissuemnist"


class OrganAMNIST(MedMNIST2D):
    """``organamnist``: abdominal CT (LiTS), axial slices, 11 organs, gray."""

    flag = "organamnist"


class OrganCMNIST(MedMNIST2D):
    """``organcmnist``: abdominal CT (LiTS), coronal slices, 11 organs, gray."""

    flag = "organcmnist"


class OrganSMNIST(MedMNIST2D):
    """``organsmnist``: abdominal CT (LiTS), sagittal slices, 11 organs, gray."""

    flag = "organsmnist"


# every flag's class, by flag (what medbackdoor.data registers)
DATASET_CLASSES: dict[str, type[MedMNIST2D]] = {
    cls.flag: cls for cls in (PathMNIST, DermaMNIST, OCTMNIST, PneumoniaMNIST, RetinaMNIST, BreastMNIST, BloodMNIST,
                              TissueMNIST, OrganAMNIST, OrganCMNIST, OrganSMNIST)}
