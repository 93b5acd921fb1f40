"""A user's own images: ``folder`` (one folder per class) and ``csv`` (a table of image paths and labels).

Both read image files under a data root (PNG, JPEG, BMP or TIFF; 8- or 16-bit gray, RGB, RGBA or palette, decoded
by :func:`~medbackdoor.data.preprocess.read_image8`), as gray (``channels: 1``, the default) or RGB
(``channels: 3``), and give a single-label task (multi-class, or binary with two classes) or, for ``csv``, a
multi-label one.

``folder`` reads torchvision's ``ImageFolder`` layout, with or without split folders::

    root/train/<class>/**/<image>        root/<class>/**/<image>
    root/val/<class>/**/<image>          (no split folders: the splits are drawn, see below)
    root/test/<class>/**/<image>

A split folder is ``train``, ``val`` (or ``valid``, ``validation``) or ``test``, in any case. Images may sit in
sub-folders of their class folder (per patient, say); linked folders are followed, and a link to a folder already
read is an error. Hidden names and
``__MACOSX`` are skipped, and ``exclude`` (a regular expression on the relative path) leaves out more (BUSI's
``_mask`` images). An image file outside any class folder, a root that mixes split folders and other folders, or two
class folders whose names differ only in case is an error. Classes are the class folders' names, sorted (by number
when all are integers; ``classes`` gives their order, and leaves out the folders it does not list).

``csv`` reads one table (``file``, default ``labels.csv`` under the root) with a column of image paths relative to
the root (``path``) and one of labels (``label``): a class name, or for a multi-label task the names joined by
``separator`` (``|``; an empty cell is no positive label), or instead one 0/1 column per class (``label_columns``,
as ISIC's ``GroundTruth.csv``). Optional columns: ``split`` (train, val/valid/validation or test) and ``patient``.
``path_template`` builds the path from the cell (``images/{}.jpg`` where the table names images by id, as
HAM10000's metadata does; ``**/{}.jpg``: the one file of that name anywhere under the root). A path that is
absolute, holds ``..``, ``.``, a backslash or a drive, or otherwise could leave the data root is an error naming
its line: no path read from the table is ever followed outside the root (checked on the text; symlinks the user
placed inside the root are followed). Listed images that are not on disk are dropped and counted in ``missing``;
an empty label cell of a single-label task is an unknown label (a NaN row, left out of the loss and the metrics).

Task (``task``): ``auto`` is ``binary`` for two classes, ``multiclass`` for more, and for ``csv`` ``multilabel``
when some label cell holds the separator. A binary task's first class is the negative one: with sorted folder
names that may be the wrong one (``malignant`` before ``normal``), so give ``classes: [normal, malignant]``.

Splits: where the data gives none (no split folders, no ``split`` column), whole patients are drawn into ``val``
(``val_fraction``) and ``test`` (``test_fraction``), seeded, the rest ``train``; where it gives ``train`` but no
``val`` (or no ``test``), that split is drawn from ``train`` the same way. Patients: the ``patient`` column, or
``patient_regex`` (a regular expression searched in each image's path relative to the root, e.g.
``'(patient\\d+)'``; its first group, or the whole match, is the patient id). Without either, each image is its
own patient and the patient overlap between splits is reported as unknown, since it cannot be checked.

Missing images are dropped before the splits are drawn. A single-label class with no train image is an error (the
model could not learn it; leave it out with ``classes``).
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

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
TASKS = ("auto", "multiclass", "binary", "multilabel")
ANYWHERE = "**/"  # a path_template prefix: the file of that name anywhere under the root


def relative_path(text: object, source: str, line: int) -> str:
    """An image path read from a table, as a POSIX path relative to the data root (a leading ``./`` dropped).

    Raises:
        UserError: the path is empty, absolute, holds ``..``, ``.``, an empty part, a backslash, a NUL or a drive
            (one line naming ``source`` and ``line``).
    """
    text = str(text).strip()
    while text.startswith("./"):
        text = text[2:]
    parts = text.split("/")
    bad = (not text or text.startswith("/") or "\\" in text or "\0" in text or ":" in parts[0]
           or any(p in ("", ".", "..") for p in parts))
    if bad or PurePosixPath(text).is_absolute():
        raise UserError(f"{source} line {line}: image path {text!r} is not a relative path inside the data root")
    return text


def sorted_names(names) -> tuple[str, ...]:
    """Distinct class names, sorted: by number when every name is an integer (``2`` before ``10``), else as text."""
    names = set(names)
    if names and all(re.fullmatch(r"-?\d+", n) for n in names):
        return tuple(sorted(names, key=int))
    return tuple(sorted(names))


def listed(classes: Sequence[str] | str, source: str) -> tuple[str, ...]:
    """The names of a ``classes`` option (a list, or a comma-separated string).

    Raises:
        UserError: the list is empty or repeats a name.
    """
    if isinstance(classes, str):
        classes = [c.strip() for c in classes.split(",") if c.strip()]
    names = tuple(str(c) for c in classes)
    if not names or len(set(names)) != len(names):
        raise UserError(f"{source}: classes must list distinct names, got {list(names)}")
    return names


def single_task(task: str, n_classes: int, source: str) -> str:
    """``task`` resolved for a single-label dataset of ``n_classes``."""
    if task not in TASKS:
        raise UserError(f"{source}: task must be one of {', '.join(TASKS)}, got {task!r}")
    if task == "multilabel":
        raise UserError(f"{source}: a folder per class gives one label per image; use the csv dataset for a "
                        "multilabel task")
    if task == "auto":
        return "binary" if n_classes == 2 else "multiclass"
    return task


def check_fractions(val_fraction: float, test_fraction: float, source: str) -> None:
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise UserError(f"{source}: val_fraction and test_fraction must be in [0, 1) and leave some images to "
                        f"train, got {val_fraction} and {test_fraction}")


def assign_splits(given: np.ndarray | None, patients: np.ndarray, val_fraction: float, test_fraction: float,
                  seed: int, source: str) -> np.ndarray:
    """The split of every image: ``given`` (names already mapped to train/val/test), with a missing ``val`` or
    ``test`` drawn from ``train`` by whole patients; or, when nothing is given, every split drawn by whole patients
    (:func:`~medbackdoor.data.base.split_by_patient`, seeded)."""
    if given is None:
        return split_by_patient(patients, {"val": float(val_fraction), "test": float(test_fraction)}, seed)
    splits = np.asarray(given, dtype=object).copy()
    train = np.flatnonzero(splits == "train")
    if not len(train):
        raise UserError(f"{source}: no train images (a split named train is needed)")
    draw = {name: float(frac) for name, frac in (("val", val_fraction), ("test", test_fraction))
            if not (splits == name).any()}
    if draw:
        splits[train] = split_by_patient(patients[train], draw, seed)
    return splits.astype(str)


class OwnImages(ImageFileDataset):
    """What ``folder`` and ``csv`` share: the data root, channels, and the table's last steps."""

    has_patient_ids = True

    def _open_root(self, root, channels) -> None:
        if root is None:
            raise UserError(f"dataset {self.name} needs its folder: --data-root DIR, or dataset.root in a run config")
        self.root = Path(root).expanduser().resolve()
        if not self.root.is_dir():
            raise UserError(f"data root {root} does not exist or is not a folder")
        if isinstance(channels, bool) or channels not in (1, 3):
            raise UserError(f"dataset {self.name}: channels must be 1 (gray) or 3 (RGB), got {channels!r}")
        self.channels = int(channels)

    def _finish(self, rels: np.ndarray, labels: np.ndarray, patients: np.ndarray, given: np.ndarray | None,
                fractions: tuple[float, float], seed: int, limit: int | None, source: str) -> None:
        """Drop the images not on disk (counted in ``missing``), then assign the splits and set the table."""
        check_fractions(*fractions, source)
        present = np.array([os.path.isfile(self.root / r) for r in rels], dtype=bool)
        self.missing = int((~present).sum())
        if not present.any():
            raise UserError(f"{source}: none of the {len(rels)} listed images is under {self.root}")
        rels, labels, patients = rels[present], labels[present], patients[present]
        splits = assign_splits(None if given is None else given[present], patients, *fractions, seed, source)
        if not (splits == "train").any():
            raise UserError(f"{source}: no train image is left (the splits drew them all, or they are missing)")
        if self.task_kind != "multilabel":
            trained = np.nan_to_num(labels[splits == "train"]).sum(0)
            untrained = [n for n, c in zip(self.label_names, trained) if c == 0]
            if untrained:
                raise UserError(f"{source}: class(es) {untrained} have no train image, so the model could not learn "
                                "them; leave them out with classes")
        self._set_table(rels, labels, patients, splits, limit, seed)
        self._paths = [self.root / n for n in self.names]

    def source_fingerprint(self) -> dict:
        return {"dataset": self.name, "root": str(self.root), "channels": self.channels,
                "labels": list(self.label_names), "task": self.task_kind, **self._source_extra(),
                "files": self.file_stats(self.names.tolist())}

    def _source_extra(self) -> dict:
        return {}

    @classmethod
    def present(cls, root=None, **options) -> bool:
        """Whether the data root is a folder (nothing is read)."""
        return root is not None and Path(root).expanduser().is_dir()


def _patients_by_regex(rels: Sequence[str], pattern: str | None, source: str) -> tuple[np.ndarray, bool]:
    """Patient ids from ``pattern`` searched in each relative path (the first group that took part in the match,
    else the whole match), or each image its own patient (False)."""
    if pattern is None:
        return np.asarray(rels, dtype=str), False
    regex = _compile(pattern, "patient_regex", source)
    out = []
    for rel in rels:
        match = regex.search(rel)
        if match is None:
            raise UserError(f"{source}: patient_regex {pattern!r} does not match image {rel}")
        out.append(next((g for g in match.groups() if g is not None), match.group(0)))
    return np.asarray(out, dtype=str), True


def _compile(pattern: str, option: str, source: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise UserError(f"{source}: {option} {pattern!r} is not a regular expression ({exc})") from None


class ImageFolder(OwnImages):
    """Images in one folder per class (see the module docstring for the layout, task, splits and patients).

    Args:
        root: the folder holding the class folders, or the split folders holding them.
        channels: 1 (gray, default) or 3 (RGB).
        classes: the class folders to use, in label order (default: all, sorted by name).
        task: ``auto`` (default), ``multiclass`` or ``binary``.
        patient_regex: where a patient id is in each image's relative path (default: none).
        exclude: a regular expression; images whose relative path it matches are left out (``_mask`` for
            BUSI's segmentation masks beside its images).
        val_fraction: the share drawn into val where the layout gives no val split.
        test_fraction: the share drawn into test where the layout gives no test split.
        seed: seeds the drawn splits and ``limit``.
        limit: keep at most this many images per split (a seeded subset), for quick runs.
    """

    name = "folder"
    task_kind = "multiclass"

    @classmethod
    def example(cls, root) -> dict:
        """Three classes in class folders without split folders, two images per patient (``p07_a.png``), some in
        a per-patient sub-folder."""
        from medbackdoor.data.base import write_example_images

        root = Path(root)
        paths = []
        for c, name in enumerate(("benign", "malignant", "normal")):
            for patient in range(c * 8, c * 8 + 8):
                sub = f"p{patient:02d}/" if patient % 3 == 0 else ""
                paths += [root / name / f"{sub}p{patient:02d}_{view}.png" for view in "ab"]
        write_example_images(paths)
        return {"root": str(root), "patient_regex": r"(p\d+)_"}

    def __init__(self, root: str | os.PathLike | None = None, channels: int = 1,
                 classes: Sequence[str] | str | None = None, task: str = "auto", patient_regex: str | None = None,
                 exclude: str | None = None, val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0,
                 limit: int | None = None) -> None:
        self._open_root(root, channels)
        source = f"dataset folder {self.root}"
        folders = sorted(p for p in self.root.iterdir() if p.is_dir() and not _skipped(p.name))
        split_dirs = [p for p in folders if p.name.lower() in SPLIT_NAMES]
        if split_dirs and len(split_dirs) != len(folders):
            others = [p.name for p in folders if p not in split_dirs]
            raise UserError(f"{source} mixes split folders ({', '.join(p.name for p in split_dirs)}) and other "
                            f"folders ({', '.join(others)}); put every class folder under a split folder, or "
                            "use no split folder (a class may not be named train, val or test)")
        mapped = [SPLIT_NAMES[p.name.lower()] for p in split_dirs]
        if len(set(mapped)) != len(mapped):
            raise UserError(f"{source} has two folders for one split: {', '.join(p.name for p in split_dirs)}")
        tops = [(p, SPLIT_NAMES[p.name.lower()]) for p in split_dirs] if split_dirs else [(self.root, None)]
        if split_dirs:
            _stray_images(self.root, self.root, source)
        skip = _compile(exclude, "exclude", source) if exclude is not None else None
        rels, found, given, walked = [], [], [], set()
        for top, split in tops:
            _stray_images(top, self.root, source)
            for class_dir in sorted(p for p in top.iterdir() if p.is_dir() and not _skipped(p.name)):
                for path in _images_under(class_dir, source, walked):
                    rel = path.relative_to(self.root).as_posix()
                    if skip is None or not skip.search(rel):
                        rels.append(rel)
                        found.append(class_dir.name)
                        given.append(split)
        if not rels:
            raise UserError(f"{source} holds no image ({', '.join(EXTENSIONS)}) in a class folder")
        folded = {}
        for name in sorted(set(found)):
            if name.lower() in folded:
                raise UserError(f"{source}: class folders {folded[name.lower()]!r} and {name!r} differ only in case; "
                                "give them one name")
            folded[name.lower()] = name
        if classes is None:
            self.label_names = sorted_names(found)
        else:
            self.label_names = listed(classes, source)
            absent = [c for c in self.label_names if c not in set(found)]
            if absent:
                raise UserError(f"{source}: classes {absent} have no image; the class folders are "
                                f"{list(sorted_names(found))}")
        self.task_kind = single_task(task, len(self.label_names), source)
        keep = np.isin(np.asarray(found), self.label_names)
        rels_kept = np.asarray(rels, dtype=str)[keep]
        index = {name: i for i, name in enumerate(self.label_names)}
        labels = np.eye(len(self.label_names), dtype=np.float32)[[index[c] for c, k in zip(found, keep) if k]]
        patients, self.has_patient_ids = _patients_by_regex(rels_kept.tolist(), patient_regex, source)
        self.patient_regex, self.exclude = patient_regex, exclude
        split_given = None if not split_dirs else np.asarray(given, dtype=object)[keep]
        self._finish(rels_kept, labels, patients, split_given, (val_fraction, test_fraction), seed, limit, source)

    def _source_extra(self) -> dict:
        return {"patient_regex": self.patient_regex, "exclude": self.exclude}


def _skipped(name: str) -> bool:
    """Hidden files and folders, and the ``__MACOSX`` folder of zips made on a Mac."""
    return name.startswith(".") or name == "__MACOSX"


def _images_under(folder: Path, source: str, walked: set) -> list[Path]:
    """Every image file under ``folder`` (any depth; hidden names skipped; linked folders followed), sorted by path.
    ``walked`` holds the real paths of the folders read so far, this call's added: reaching one again (a link
    loop, or two links to one folder) is an error."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in walked:
            raise UserError(f"{source}: folder {dirpath} is a link to a folder already read ({real}); remove the link")
        walked.add(real)
        dirnames[:] = sorted(d for d in dirnames if not _skipped(d))
        out += [Path(dirpath) / f for f in filenames if not _skipped(f) and f.lower().endswith(EXTENSIONS)]
    return sorted(out)


def _stray_images(folder: Path, root: Path, source: str) -> None:
    stray = sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(EXTENSIONS))
    if stray:
        raise UserError(f"{source}: image {stray[0].relative_to(root).as_posix()} is not in a class folder "
                        f"({len(stray)} such image(s))")


class CsvImages(OwnImages):
    """Images listed in a table with their labels (see the module docstring for the columns, task, splits and
    patients).

    Args:
        root: the data root; every image path in the table is relative to it.
        file: the table (CSV), relative to the root or absolute (default ``labels.csv``).
        channels: 1 (gray, default) or 3 (RGB).
        classes: the label names, in order (default: every name in the label column, sorted); another name in
            the table is an error naming its line.
        task: ``auto`` (default), ``multiclass``, ``binary`` or ``multilabel``.
        path_column: the column of image paths.
        label_column: the column of labels (class names).
        label_columns: instead, one 0/1 column per class (ISIC's ``GroundTruth.csv``), in label order.
        split_column: the optional column of splits (absent: the splits are drawn).
        patient_column: the optional column of patient ids (absent: each image is its own patient).
        separator: what joins the names of a multi-label cell.
        path_template: makes the image path of a path cell, ``{}`` standing for the cell (``images/{}.jpg`` for a
            table that names images by id); ``**/{}.jpg`` finds the file of that name anywhere under the root.
        val_fraction: the share drawn into val where the table gives no val split.
        test_fraction: the share drawn into test where the table gives no test split.
        seed: seeds the drawn splits and ``limit``.
        limit: keep at most this many images per split (a seeded subset), for quick runs.
    """

    name = "csv"
    task_kind = "multiclass"

    @classmethod
    def example(cls, root) -> dict:
        """A multi-label table (``labels.csv``: path, label, split, patient) of 40 images of 20 patients in
        per-patient folders; some label cells empty (no finding)."""
        from medbackdoor.data.base import write_example_images

        root = Path(root)
        findings = ("", "effusion", "nodule", "effusion|nodule", "mass")
        lines, paths = ["path,label,split,patient"], []
        for patient in range(20):
            split = "train" if patient < 12 else ("val" if patient < 15 else "test")
            for view in range(2):
                rel = f"images/pt{patient:03d}/{view}.jpg"
                lines.append(f"{rel},{findings[(patient + view) % len(findings)]},{split},pt{patient:03d}")
                paths.append(root / rel)
        root.mkdir(parents=True, exist_ok=True)
        (root / "labels.csv").write_text("\n".join(lines) + "\n")
        write_example_images(paths)
        return {"root": str(root)}

    def __init__(self, root: str | os.PathLike | None = None, file: str = "labels.csv", channels: int = 1,
                 classes: Sequence[str] | str | None = None, task: str = "auto", path_column: str = "path",
                 label_column: str = "label", label_columns: Sequence[str] | str | None = None,
                 split_column: str = "split", patient_column: str = "patient", separator: str = "|",
                 path_template: str = "{}", val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0,
                 limit: int | None = None) -> None:
        self._open_root(root, channels)
        if task not in TASKS:
            raise UserError(f"dataset csv: task must be one of {', '.join(TASKS)}, got {task!r}")
        if not separator:
            raise UserError("dataset csv: separator must not be empty")
        anywhere = path_template.startswith(ANYWHERE)
        if path_template.count("{}") != 1 or (anywhere and "/" in path_template.removeprefix(ANYWHERE)):
            raise UserError(f"dataset csv: path_template must hold {{}} once (where the cell goes), and after "
                            f"{ANYWHERE} only a file name; got {path_template!r}")
        if label_columns is not None and classes is not None:
            raise UserError("dataset csv: give classes (with label_column) or label_columns, not both")
        self.csv_path = Path(file).expanduser()
        if not self.csv_path.is_absolute():
            self.csv_path = self.root / self.csv_path
        source = self.csv_path.name
        table, lines = _read_table(self.csv_path)
        columns = [path_column, *(listed(label_columns, source) if label_columns is not None else [label_column])]
        lacking = [c for c in columns if c not in table.columns]
        if lacking:
            raise UserError(f"{source} lacks column(s) {', '.join(lacking)} (it has {', '.join(table.columns)})")
        cells = [str(p).strip() for p in table[path_column]]
        for cell, line in zip(cells, lines):
            if not cell:
                raise UserError(f"{source} line {line}: the {path_column} cell is empty")
        rels = self._paths_of(cells, path_template, lines, source)
        seen: dict[str, int] = {}
        for rel, line in zip(rels, lines):
            if rel in seen:
                raise UserError(f"{source} line {line}: image {rel} is listed again (first on line {seen[rel]})")
            seen[rel] = line
        if label_columns is not None:
            self.label_names = tuple(columns[1:])
            labels = _indicator_rows(table, self.label_names, lines, source)
            multi = task == "multilabel" or (task == "auto" and bool((np.nansum(labels, 1) > 1).any()))
            if not multi:
                labels[labels.sum(1) == 0] = np.nan  # no class marked: unknown
                several = np.flatnonzero(np.nansum(labels, 1) > 1)
                if len(several):
                    raise UserError(f"{source} line {lines[several[0]]}: several classes marked in a {task} task")
        else:
            label_cells = [str(c).strip() for c in table[label_column]]
            multi = task == "multilabel" or (task == "auto" and any(separator in c for c in label_cells))
            names = [[n.strip() for n in c.split(separator)] if multi else [c] for c in label_cells]
            found = {n for row in names for n in row if n}
            if not found:
                raise UserError(f"{source}: column {label_column} names no class")
            self.label_names = sorted_names(found) if classes is None else listed(classes, source)
            labels = _label_rows(names, self.label_names, multi, lines, source)
        self.task_kind = "multilabel" if multi else single_task(task, len(self.label_names), source)
        self.separator, self.path_template = separator, path_template
        patients = np.asarray(rels, dtype=str)
        self.has_patient_ids = False
        if patient_column in table.columns:
            given_ids = [str(p).strip() for p in table[patient_column]]
            self.has_patient_ids = any(given_ids)
            patients = np.array([p or rel for p, rel in zip(given_ids, rels)], dtype=str)
        given = None
        if split_column in table.columns:
            given = np.empty(len(rels), dtype=object)
            for i, (value, line) in enumerate(zip(table[split_column], lines)):
                key = str(value).strip().lower()
                if key not in SPLIT_NAMES:
                    raise UserError(f"{source} line {line}: split {value!r} is not one of {', '.join(SPLIT_NAMES)}")
                given[i] = SPLIT_NAMES[key]
        self._finish(np.asarray(rels, dtype=str), labels, patients, given, (val_fraction, test_fraction), seed,
                     limit, source)

    def _paths_of(self, cells: list[str], template: str, lines: list[int], source: str) -> list[str]:
        """The relative path of each path cell through ``template``; with the ``**/`` prefix, the one file of that
        name under the root (a name absent stays as written, at the root, and is counted missing)."""
        if not template.startswith(ANYWHERE):
            return [relative_path(template.replace("{}", c), source, line) for c, line in zip(cells, lines)]
        names = [relative_path(template.removeprefix(ANYWHERE).replace("{}", c), source, line)
                 for c, line in zip(cells, lines)]
        wanted = {n for n in names if "/" not in n}
        where: dict[str, list[str]] = {}
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if not _skipped(d))
            for f in filenames:
                if f in wanted:
                    where.setdefault(f, []).append((Path(dirpath) / f).relative_to(self.root).as_posix())
        out = []
        for name, line in zip(names, lines):
            if "/" in name:
                raise UserError(f"{source} line {line}: {name!r} is not a file name (path_template {template!r})")
            found = sorted(where.get(name, []))
            if len(found) > 1:
                raise UserError(f"{source} line {line}: {name} is under the root {len(found)} times "
                                f"({', '.join(found[:3])}); give its folder in path_template")
            out.append(found[0] if found else name)
        return out

    def _source_extra(self) -> dict:
        stat = self.csv_path.stat()
        return {"table": [str(self.csv_path), stat.st_size, stat.st_mtime_ns], "separator": self.separator,
                "path_template": self.path_template}

    @classmethod
    def present(cls, root=None, file: str = "labels.csv", **options) -> bool:
        """Whether the data root and its table are there (nothing is read)."""
        if root is None:
            return False
        path = Path(file).expanduser()
        return (path if path.is_absolute() else Path(root).expanduser() / path).is_file()


def _read_table(path: Path) -> tuple[pd.DataFrame, list[int]]:
    """The table as text cells (stripped column names, a BOM dropped), without its blank rows, and the line number
    of each row kept (the header is line 1)."""
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False, encoding="utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"dataset csv: no table {path} (dataset.options.file)") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise UserError(f"cannot parse {path}: {str(exc).splitlines()[0]}") from None
    table.columns = [str(c).strip() for c in table.columns]
    filled = (table.apply(lambda col: col.str.strip()) != "").any(axis=1).to_numpy()
    lines = (np.flatnonzero(filled) + 2).tolist()
    table = table[filled].reset_index(drop=True)
    if not len(table):
        raise UserError(f"{path.name} lists no image")
    return table, lines


def _label_rows(names: list[list[str]], label_names: tuple[str, ...], multi: bool, lines: list[int],
                source: str) -> np.ndarray:
    """N×C label rows: multi-hot (an empty cell: none), or one-hot (an empty cell: unknown, a NaN row)."""
    index = {n: i for i, n in enumerate(label_names)}
    out = np.zeros((len(names), len(label_names)), np.float32)
    for row, (cell, line) in enumerate(zip(names, lines)):
        wanted = [n for n in cell if n]
        unknown = [n for n in wanted if n not in index]
        if unknown:
            raise UserError(f"{source} line {line}: label {unknown[0]!r} is not a class ({', '.join(label_names)})")
        if not multi and not wanted:
            out[row] = np.nan
        out[row, [index[n] for n in wanted]] = 1.0
    return out


def _indicator_rows(table: pd.DataFrame, columns: tuple[str, ...], lines: list[int], source: str) -> np.ndarray:
    """N×C rows of 0/1 class columns (``1``, ``1.0``, ``0``, ``0.0``; an empty cell is 0)."""
    out = np.zeros((len(table), len(columns)), np.float32)
    for j, column in enumerate(columns):
        for i, value in enumerate(table[column]):
            text = str(value).strip()
            if text in ("1", "1.0"):
                out[i, j] = 1.0
            elif text not in ("0", "0.0", ""):
                raise UserError(f"{source} line {lines[i]}: column {column} holds {value!r}, expected 0 or 1")
    return out
