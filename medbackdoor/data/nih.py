"""NIH ChestX-ray14 (Wang et al., CVPR 2017), read from the release as NIH distributes it.

112,120 frontal radiographs of 30,805 patients, 14 NLP-mined findings (see :data:`medbackdoor.labels.LABELS`).
Download: https://nihcc.app.box.com/v/ChestXray-NIHCC (or the Kaggle mirror ``nih-chest-xrays/data``).

Layout under ``root`` (what the release unpacks to)::

    Data_Entry_2017_v2020.csv   (or Data_Entry_2017.csv; "Patient Gender" or "Patient Sex")
    train_val_list.txt, test_list.txt   (the official patient-wise split, one file name per line)
    images_001/images/*.png ... images_012/images/*.png   (or one flat images/ folder)

Splits: ``official`` uses ``test_list.txt`` as test and carves validation from ``train_val_list.txt`` by patient
(seeded, ``val_fraction`` of the images). ``chexnet`` reads the CheXNet lists ``train_list.txt``,
``val_list.txt``, ``test_list.txt`` (a file name and 14 integers per line; those labels are used).
``auto`` (default) picks ``chexnet`` when ``train_list.txt`` and ``val_list.txt`` exist, else ``official``.
Images that are listed but not on disk (only some of the 12 archives downloaded) are dropped and counted in
``missing``; it is an error only when none is present.

Citation: Wang X. et al. "ChestX-ray8: Hospital-scale chest X-ray database and benchmarks on weakly-supervised
classification and localization of common thorax diseases." CVPR 2017.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from medbackdoor.data.base import ImageFileDataset, split_by_patient
from medbackdoor.errors import UserError
from medbackdoor.labels import LABELS, NUM_CLASSES, parse_findings

CSV_NAMES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv.gz")
REQUIRED_COLUMNS = ("Image Index", "Finding Labels", "Patient ID")
SPLIT_CHOICES = ("auto", "official", "chexnet")
IMAGE_DIRS = re.compile(r"^images(_\d{3})?$")


class NIHChestXray14(ImageFileDataset):
    """The NIH ChestX-ray14 release in a local folder (see the module docstring for the layout).

    Args:
        root: the folder holding the CSV, the split lists and the image folders.
        split: ``auto``, ``official`` or ``chexnet``.
        val_fraction: share of train_val images (whole patients) held out for validation (official split).
        seed: seeds the validation carve and ``limit``.
        limit: keep at most this many images per split (a seeded subset), for quick runs.
    """

    name = "nih"
    label_names = LABELS

    @classmethod
    def example(cls, root) -> dict:
        """A miniature release: ``Data_Entry_2017_v2020.csv``, the official ``train_val_list.txt`` and
        ``test_list.txt``, and the PNGs in ``images_001/images`` and ``images_002/images``."""
        from medbackdoor.data.base import write_example_images
        from medbackdoor.labels import LABELS

        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        rows, names = [], []
        for patient in range(1, 11):
            for k in range(3):
                name = f"{patient:08d}_{k:03d}.png"
                found = [LABELS[i] for i in np.flatnonzero(rng.random(len(LABELS)) < 0.15)]
                rows.append(f"{name},{'|'.join(found) or 'No Finding'},{k},{patient},{40 + patient},"
                            f"{'MF'[patient % 2]},PA,1024,1024,0.143,0.143\n")
                names.append(name)
        header = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Sex,View Position,"
                  "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n")
        (root / "Data_Entry_2017_v2020.csv").write_text(header + "".join(rows))
        test = [n for n in names if int(n[:8]) % 4 == 1]
        (root / "test_list.txt").write_text("\n".join(test) + "\n")
        (root / "train_val_list.txt").write_text("\n".join(n for n in names if n not in test) + "\n")
        write_example_images([root / f"images_{1 + i % 2:03d}" / "images" / n for i, n in enumerate(names)])
        return {"root": str(root)}

    def __init__(self, root: str | os.PathLike | None = None, split: str = "auto", val_fraction: float = 0.1,
                 seed: int = 0, limit: int | None = None) -> None:
        if root is None:
            raise UserError("dataset nih needs its folder: --data-root DIR, or dataset.root in a run config")
        self.root = Path(root).expanduser().resolve()
        if not self.root.is_dir():
            raise UserError(f"data root {root} does not exist or is not a folder")
        if split not in SPLIT_CHOICES:
            raise UserError(f"split must be one of {', '.join(SPLIT_CHOICES)}, got {split!r}")
        self.csv_path = _find_csv(self.root)
        table = read_table(self.csv_path)
        files = find_images(self.root)
        split = split if split != "auto" else ("chexnet" if _has(self.root, "train_list.txt", "val_list.txt")
                                               else "official")
        self.split_scheme = split
        names, labels, splits = (_chexnet_split if split == "chexnet" else _official_split)(
            self.root, table, val_fraction, seed)
        present = np.array([n in files for n in names], dtype=bool)
        self.missing = int((~present).sum())
        if not present.any():
            raise UserError(f"none of the {len(names)} listed images is under {self.root} "
                            "(expected images_0XX/images/*.png or images/*.png)")
        patient_of = dict(zip(table["Image Index"], table["Patient ID"].astype(str)))
        names = names[present]
        self._paths = [files[n] for n in names]
        self._set_table(names, labels[present], [patient_of[n] for n in names], splits[present], limit, seed)
        keep = {n: i for i, n in enumerate(names)}
        self._paths = [self._paths[keep[n]] for n in self.names]

    def source_fingerprint(self) -> dict:
        return {
            "dataset": self.name,
            "root": str(self.root),
            "csv": _file_id(self.csv_path),
            "split": self.split_scheme,
            "files": self.file_stats([p.name for p in self._paths]),
        }


def _has(root: Path, *names: str) -> bool:
    return all((root / n).is_file() for n in names)


def _file_id(path: Path) -> list:
    stat = path.stat()
    return [path.name, stat.st_size, stat.st_mtime_ns]


def _find_csv(root: Path) -> Path:
    for name in CSV_NAMES:
        if (root / name).is_file():
            return root / name
    raise UserError(f"no label table in {root}: expected one of {', '.join(CSV_NAMES[:2])}")


def read_table(path: Path) -> pd.DataFrame:
    """Read the NIH label CSV; accepts ``Patient Gender`` or ``Patient Sex``, returns a column ``sex`` if any.

    Raises:
        UserError: the file does not parse, lacks a required column, or names an image unsafely.
    """
    try:
        table = pd.read_csv(path, dtype={"Image Index": str, "Finding Labels": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise UserError(f"cannot parse {path.name}: {str(exc).splitlines()[0]}") from None
    lacking = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if lacking:
        raise UserError(f"{path.name} lacks column(s) {', '.join(lacking)}")
    for column in ("Patient Gender", "Patient Sex"):
        if column in table.columns:
            table = table.rename(columns={column: "sex"})
            break
    table["Image Index"] = [safe_name(n, path.name) for n in table["Image Index"]]
    table["Finding Labels"] = table["Finding Labels"].fillna("No Finding")
    if table["Image Index"].duplicated().any():
        dup = table["Image Index"][table["Image Index"].duplicated()].iloc[0]
        raise UserError(f"{path.name} lists image {dup} twice")
    return table


def safe_name(entry: object, source: str) -> str:
    """The plain file name of a list or CSV entry; entries that could leave the data root are refused.

    A leading folder (``images/00000001_000.png``) is allowed and dropped; absolute paths, ``..`` and
    backslashes are not.
    """
    text = str(entry).strip()
    parts = text.split("/")
    if not text or text.startswith("/") or "\\" in text or ".." in parts or parts[-1] in ("", "."):
        raise UserError(f"{source}: image entry {text!r} is not a plain file name inside the data root")
    return parts[-1]


def find_images(root: Path) -> dict[str, Path]:
    """Map file name → path for PNGs in ``images_0XX/images/``, ``images_0XX/`` and ``images/`` under root."""
    found: dict[str, Path] = {}
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and IMAGE_DIRS.match(p.name)):
        for folder in (sub / "images", sub):
            if folder.is_dir():
                with os.scandir(folder) as it:
                    for entry in it:
                        if entry.name.lower().endswith(".png") and entry.is_file():
                            found.setdefault(entry.name, Path(entry.path))
    return found


def _read_list(path: Path) -> list[list[str]]:
    if not path.is_file():
        raise UserError(f"split list {path} is missing")
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    return [[safe_name(r[0], path.name), *r[1:]] for r in rows]


def _official_split(root: Path, table: pd.DataFrame, val_fraction: float, seed: int):
    train_val = [r[0] for r in _read_list(root / "train_val_list.txt")]
    test = [r[0] for r in _read_list(root / "test_list.txt")]
    names = np.array(train_val + test)
    _check_listed(names, table, "train_val_list.txt/test_list.txt")
    rows = table.set_index("Image Index").loc[names]
    labels = parse_findings(rows["Finding Labels"])
    splits = np.array(["train"] * len(train_val) + ["test"] * len(test), dtype=object)
    patients = rows["Patient ID"].astype(str).to_numpy()
    tv = np.arange(len(train_val))
    splits[tv] = split_by_patient(patients[tv], {"val": val_fraction}, seed)
    return names, labels, splits.astype(str)


def _chexnet_split(root: Path, table: pd.DataFrame, val_fraction: float, seed: int):
    names, labels, splits = [], [], []
    for split in ("train", "val", "test"):
        path = root / f"{split}_list.txt"
        for row in _read_list(path):
            if len(row) != 1 + NUM_CLASSES:
                raise UserError(f"{path.name}: expected a file name and {NUM_CLASSES} labels, got {' '.join(row)}")
            try:
                values = [int(v) for v in row[1:]]
            except ValueError:
                raise UserError(f"{path.name}: labels must be 0 or 1 in line {' '.join(row)}") from None
            names.append(row[0])
            labels.append(values)
            splits.append(split)
    names = np.array(names)
    _check_listed(names, table, "the CheXNet lists")
    return names, np.array(labels, np.float32), np.array(splits)


def _check_listed(names: np.ndarray, table: pd.DataFrame, source: str) -> None:
    unknown = set(names.tolist()) - set(table["Image Index"])
    if unknown:
        raise UserError(f"{len(unknown)} image(s) in {source} are not in the label table, e.g. {sorted(unknown)[0]}")
    if len(set(names.tolist())) != len(names):
        raise UserError(f"{source} list an image more than once")
