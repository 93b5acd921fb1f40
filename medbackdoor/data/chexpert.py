"""CheXpert (Irvin et al., AAAI 2019), read from the release as Stanford distributes it.

224,316 chest radiographs (frontal and lateral) of 65,240 patients, 14 observations mined from the reports by
the CheXpert labeler, each positive (1), negative (0), uncertain (-1) or not mentioned (blank).
Download: https://stanfordmlgroup.github.io/competitions/chexpert/ (``CheXpert-v1.0`` at full resolution, or
``CheXpert-v1.0-small``, about 11 GB, downscaled to about 390×320).

Layout under ``root`` (the folder holding ``train.csv``; the folder holding one ``CheXpert-v1.0*/`` release
folder is accepted too)::

    train.csv, valid.csv        Path, Sex, Age, Frontal/Lateral, AP/PA, then the 14 observation columns
    test_labels.csv             optional (or test.csv): the expert-labelled test set of the later release
    train/patient00001/study1/view1_frontal.jpg, .../view2_lateral.jpg, ...
    valid/patient64541/study1/view1_frontal.jpg, ...
    test/patient64741/...       (when a test CSV is present)

The CSV column ``Path`` names each image relative to the folder *above* the release folder
(``CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg``); the leading release folder name
(``CheXpert-v1.0``, ``CheXpert-v1.0-small`` or any ``CheXpert-v1.0*``) is dropped and the rest is resolved under
the data root. A path that is absolute, holds ``..`` or a backslash, or otherwise could leave the data root is an
error naming the CSV row: no path read from a CSV is ever followed outside the data root (checked on the text of
the path; symlinks the user placed inside the root are followed). Images listed but not on disk are dropped and
counted in ``missing``; it is an error only when none is present.

Views: ``view="frontal"`` (default; the usual protocol) keeps the rows whose ``Frontal/Lateral`` is ``Frontal``,
``lateral`` the lateral ones, ``all`` both. A CSV without that column (the test labels have none) gives the view
from the file name (``view1_frontal.jpg``).

Labels: ``labels`` picks the observation columns, in the order given (default: the 14 in the CSV's order,
:data:`OBSERVATIONS`; ``"competition"`` is the five competition tasks, :data:`COMPETITION`). Names match
case-insensitively. Per value: 1 → 1, 0 → 0; uncertain (-1) → ``uncertain``: ``zeros`` (U-Zeros, default), ``ones``
(U-Ones) or ``ignore`` (NaN: unknown, left out of the loss and the metrics); blank (not mentioned) →
``blank``: ``zeros`` (default, the usual reading: not mentioned means absent) or ``ignore`` (NaN). Any other value
is an error naming the row.

Splits: ``train.csv`` → ``train`` and ``val`` (whole patients, seeded, ``val_fraction`` of its images; computed
after the view filter and before missing images are dropped, so a partial download keeps the assignment);
``valid.csv`` (234 expert-labelled images of 200 patients) → ``test``. When a test CSV (``test_labels.csv`` or
``test.csv``) is next to ``train.csv``: ``train.csv`` is all ``train`` (``val_fraction`` is unused),
``valid.csv`` → ``val`` and the test CSV → ``test``. The patient id is the ``patientNNNNN`` folder of the path;
CheXpert's train, valid and test patients are disjoint.

Compared with the NIH ChestX-ray14 adapter (:mod:`medbackdoor.data.nih`): the label names are CheXpert's, not
ChestX-ray14's (``Pleural Effusion``, not ``Effusion``; ``Lung Opacity``, ``Support Devices``, ... exist only
here; ``No Finding`` is a column of its own here, while NIH encodes it as the all-zero vector), and labels can be
NaN (uncertain or blank under ``ignore``). Trigger targets are looked up among this dataset's names: the default
target, Atelectasis, exists in both. Images are JPEGs under patient/study folders instead of flat PNG archives.

Citation: Irvin J. et al. "CheXpert: A Large Chest Radiograph Dataset with Uncertainty Labels and Expert
Comparison." AAAI 2019.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from medbackdoor.data.base import ImageFileDataset, split_by_patient
from medbackdoor.errors import UserError

OBSERVATIONS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
COMPETITION: tuple[str, ...] = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
VIEWS = ("frontal", "lateral", "all")
UNCERTAIN_POLICIES = ("zeros", "ones", "ignore")
BLANK_POLICIES = ("zeros", "ignore")
TEST_CSVS = ("test_labels.csv", "test.csv")
RELEASE = re.compile(r"^CheXpert-v1\.0[^/]*$")
PATIENT = re.compile(r"^patient\d+$")
VIEW_IN_NAME = re.compile(r"_(frontal|lateral)\.[^./]+$", re.IGNORECASE)


class CheXpert(ImageFileDataset):
    """The CheXpert release in a local folder (see the module docstring for layout, labels and splits).

    Args:
        root: the folder holding ``train.csv`` (or the folder holding one ``CheXpert-v1.0*/`` release folder).
        view: ``frontal`` (default), ``lateral`` or ``all``.
        uncertain: what -1 becomes: ``zeros`` (default), ``ones`` or ``ignore`` (NaN).
        blank: what a blank (not mentioned) becomes: ``zeros`` (default) or ``ignore`` (NaN).
        labels: observation columns to use, in order (default all 14); ``"competition"`` for the five
            competition tasks; a comma-separated string is accepted too.
        val_fraction: share of ``train.csv`` images (whole patients) held out for validation (when there is no
            test CSV).
        seed: seeds the validation carve and ``limit``.
        limit: keep at most this many images per split (a seeded subset), for quick runs.
    """

    name = "chexpert"
    label_names = OBSERVATIONS  # the default (``labels`` unset); an instance holds the columns it was given

    @classmethod
    def example(cls, root) -> dict:
        """A miniature ``CheXpert-v1.0-small``: ``train.csv`` and ``valid.csv`` (1.0, 0.0, −1.0 and blank labels;
        frontal and lateral views) and their JPEGs under ``train/`` and ``valid/``."""
        from medbackdoor.data.base import write_example_images

        release = Path(root) / "CheXpert-v1.0-small"
        release.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        header = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *OBSERVATIONS]
        paths = []
        for csv_name, split, first, n in (("train.csv", "train", 1, 16), ("valid.csv", "valid", 64541, 6)):
            lines = [",".join(header)]
            for patient in range(first, first + n):
                for view, kind in ((1, "frontal"), (2, "lateral"))[: 2 if patient % 2 == 0 else 1]:
                    rel = f"{split}/patient{patient:05d}/study1/view{view}_{kind}.jpg"
                    values = rng.choice(["1.0", "0.0", "-1.0", ""], size=len(OBSERVATIONS))
                    lines.append(",".join([f"CheXpert-v1.0-small/{rel}", "Female", "50", kind.capitalize(),
                                           "AP" if kind == "frontal" else "", *values]))
                    paths.append(release / rel)
            (release / csv_name).write_text("\n".join(lines) + "\n")
        write_example_images(paths)
        return {"root": str(Path(root))}

    def __init__(self, root: str | os.PathLike | None = None, view: str = "frontal", uncertain: str = "zeros",
                 blank: str = "zeros", labels: Sequence[str] | str | None = None, val_fraction: float = 0.1,
                 seed: int = 0, limit: int | None = None) -> None:
        if root is None:
            raise UserError("dataset chexpert needs its folder: --data-root DIR, or dataset.root in a run config")
        _choose("view", view, VIEWS)
        _choose("uncertain", uncertain, UNCERTAIN_POLICIES)
        _choose("blank", blank, BLANK_POLICIES)
        self.root = find_root(Path(root).expanduser())
        self.label_names = resolve_labels(labels)
        self.view, self.uncertain, self.blank = view, uncertain, blank
        test_csv = next((self.root / n for n in TEST_CSVS if (self.root / n).is_file()), None)
        valid_csv = self.root / "valid.csv"
        if not valid_csv.is_file():
            raise UserError(f"no valid.csv in {self.root} (the CheXpert release has train.csv and valid.csv)")
        self.csv_paths = [self.root / "train.csv", valid_csv] + ([test_csv] if test_csv else [])

        parts = []  # (rel paths, labels, patients, splits) per CSV
        for path, split in zip(self.csv_paths, ("train", "val" if test_csv else "test", "test")):
            rels, lab, patients = self._read_csv(path)
            splits = np.full(len(rels), split, dtype=object)
            if path.name == "train.csv" and not test_csv:
                splits = split_by_patient(patients, {"val": float(val_fraction)}, seed).astype(object)
            parts.append((rels, lab, patients, splits))
        rels = np.concatenate([p[0] for p in parts])
        labels_arr = np.concatenate([p[1] for p in parts])
        patients = np.concatenate([p[2] for p in parts])
        splits = np.concatenate([p[3] for p in parts]).astype(str)
        if len(set(rels.tolist())) != len(rels):
            dup = pd.Series(rels)[pd.Series(rels).duplicated()].iloc[0]
            raise UserError(f"image {dup} is listed more than once in {', '.join(p.name for p in self.csv_paths)}")
        if not len(rels):
            raise UserError(f"no {view} images listed in {', '.join(p.name for p in self.csv_paths)}")

        present = np.array([os.path.isfile(self.root / r) for r in rels], dtype=bool)
        self.missing = int((~present).sum())
        if not present.any():
            raise UserError(f"none of the {len(rels)} listed images is under {self.root} "
                            "(expected train/patientNNNNN/studyN/viewN_frontal.jpg, ...)")
        rels = rels[present]
        self._set_table(rels, labels_arr[present], patients[present], splits[present], limit, seed)
        self._paths = [self.root / n for n in self.names]

    def _read_csv(self, path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows of one CSV that pass the view filter: relative image paths, N×L labels, patient ids."""
        table = read_csv(path, self.label_names)
        rels = [safe_relpath(p, path.name, i) for i, p in enumerate(table["Path"])]
        views = _views(table, rels, path.name) if self.view != "all" else None
        keep = np.ones(len(rels), bool) if views is None else (views == self.view)
        rows = np.flatnonzero(keep)
        rels = [rels[i] for i in rows]
        labels = parse_labels(table.iloc[rows], self.label_names, self.uncertain, self.blank, path.name, rows)
        patients = [patient_of(r, path.name, i) for r, i in zip(rels, rows)]
        return np.array(rels, dtype=object).astype(str), labels, np.array(patients, dtype=object).astype(str)

    def source_fingerprint(self) -> dict:
        return {
            "dataset": self.name,
            "root": str(self.root),
            "csv": [_file_id(p) for p in self.csv_paths],
            "view": self.view,
            "uncertain": self.uncertain,
            "blank": self.blank,
            "labels": list(self.label_names),
            "files": self.file_stats(self.names.tolist()),
        }


def _choose(option: str, value: object, choices: Sequence[str]) -> None:
    if value not in choices:
        raise UserError(f"chexpert: {option} must be one of {', '.join(choices)}, got {value!r}")


def _file_id(path: Path) -> list:
    stat = path.stat()
    return [path.name, stat.st_size, stat.st_mtime_ns]


def find_root(root: Path) -> Path:
    """The folder holding ``train.csv``: ``root`` itself, or its one ``CheXpert-v1.0*`` sub-folder that has one.

    Raises:
        UserError: ``root`` is not a folder, holds no release, or holds several (the message lists them).
    """
    root = root.resolve()
    if not root.is_dir():
        raise UserError(f"data root {root} does not exist or is not a folder")
    if (root / "train.csv").is_file():
        return root
    releases = sorted(p for p in root.iterdir() if p.is_dir() and RELEASE.match(p.name) and
                      (p / "train.csv").is_file())
    if len(releases) == 1:
        return releases[0]
    if releases:
        raise UserError(f"{root} holds several CheXpert releases ({', '.join(p.name for p in releases)}); "
                        "set dataset.root to one of them")
    raise UserError(f"no train.csv in {root} nor in a CheXpert-v1.0*/ folder under it")


def resolve_labels(labels: Sequence[str] | str | None) -> tuple[str, ...]:
    """The observation columns to use, canonically spelled, in the order given.

    Raises:
        UserError: an unknown or repeated name, or an empty list; the message lists the valid names.
    """
    if labels is None:
        return OBSERVATIONS
    if isinstance(labels, str):
        if labels.strip().lower() in ("all", "competition"):
            return OBSERVATIONS if labels.strip().lower() == "all" else COMPETITION
        labels = [s for s in labels.split(",")]
    if not isinstance(labels, (list, tuple)):
        raise UserError(f"chexpert: labels must be a list of observation names, got {labels!r}")
    lookup = {name.lower(): name for name in OBSERVATIONS}
    out = []
    for name in labels:
        key = str(name).strip().replace("_", " ").lower()
        if key not in lookup:
            raise UserError(f"chexpert: unknown observation {name!r}; valid names: {', '.join(OBSERVATIONS)}")
        if lookup[key] in out:
            raise UserError(f"chexpert: observation {lookup[key]!r} is listed twice in labels")
        out.append(lookup[key])
    if not out:
        raise UserError("chexpert: labels must name at least one observation")
    return tuple(out)


def read_csv(path: Path, label_names: Sequence[str]) -> pd.DataFrame:
    """Read a CheXpert CSV as text (blank cells stay empty strings).

    Raises:
        UserError: the file does not parse or lacks ``Path`` or a label column (one line naming file and column).
    """
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise UserError(f"cannot parse {path.name}: {str(exc).splitlines()[0]}") from None
    table.columns = [str(c).strip() for c in table.columns]
    lacking = [c for c in ("Path", *label_names) if c not in table.columns]
    if lacking:
        raise UserError(f"{path.name} lacks column(s) {', '.join(lacking)}")
    return table


def safe_relpath(entry: object, source: str, row: int) -> str:
    """An image path of a CSV row, relative to the data root, the release folder prefix dropped.

    Raises:
        UserError: the path is empty, absolute, holds ``..``, ``.``, a backslash or a drive, or names the root.
    """
    text = str(entry).strip()
    parts = text.split("/")
    if parts and RELEASE.match(parts[0]):
        parts = parts[1:]
    bad = (not text or text.startswith("/") or "\\" in text or "\0" in text or not parts
           or ":" in parts[0] or any(p in ("", ".", "..") for p in parts))
    if bad or PurePosixPath(*parts).is_absolute():
        raise UserError(f"{source} line {row + 2}: image path {text!r} is not a relative path inside the "
                        "data root")
    return "/".join(parts)


def patient_of(rel: str, source: str, row: int) -> str:
    """The ``patientNNNNN`` folder of a relative image path."""
    for part in rel.split("/")[:-1]:
        if PATIENT.match(part):
            return part
    raise UserError(f"{source} line {row + 2}: no patientNNNNN folder in image path {rel!r}")


def _views(table: pd.DataFrame, rels: list[str], source: str) -> np.ndarray:
    """``frontal`` or ``lateral`` per row: the ``Frontal/Lateral`` column, else the file name."""
    if "Frontal/Lateral" in table.columns:
        views = table["Frontal/Lateral"].str.strip().str.lower().to_numpy()
        bad = np.flatnonzero(~np.isin(views, ("frontal", "lateral")))
        if len(bad):
            raise UserError(f"{source} line {bad[0] + 2}: Frontal/Lateral is "
                            f"{table['Frontal/Lateral'].iloc[bad[0]]!r}, expected Frontal or Lateral")
        return views
    out = []
    for i, rel in enumerate(rels):
        m = VIEW_IN_NAME.search(rel)
        if m is None:
            raise UserError(f"{source} line {i + 2}: no Frontal/Lateral column and the view of {rel!r} is not in "
                            "its name (viewN_frontal.jpg)")
        out.append(m.group(1).lower())
    return np.array(out)


def parse_labels(table: pd.DataFrame, label_names: Sequence[str], uncertain: str, blank: str, source: str,
                 rows: np.ndarray) -> np.ndarray:
    """The N×L float32 labels of the rows: 1, 0, -1 and blank mapped by the policies (NaN for ``ignore``)."""
    u = {"zeros": 0.0, "ones": 1.0, "ignore": np.nan}[uncertain]
    b = {"zeros": 0.0, "ignore": np.nan}[blank]
    out = np.empty((len(table), len(label_names)), np.float32)
    for j, name in enumerate(label_names):
        text = table[name].str.strip().to_numpy()
        empty = text == ""
        values = pd.to_numeric(pd.Series(np.where(empty, "0", text)), errors="coerce").to_numpy()
        bad = np.flatnonzero(~np.isin(values, (1.0, 0.0, -1.0)))
        if len(bad):
            raise UserError(f"{source} line {rows[bad[0]] + 2}: {name} is {text[bad[0]]!r}, "
                            "expected 1, 0, -1 or blank")
        col = values.astype(np.float32)
        col[values == -1.0] = u
        col[empty] = b
        out[:, j] = col
    return out
