"""Single-label (multi-class and binary) backdoor metrics, as pure functions of arrays.

Shapes: ``y_true`` is the true class of each test image, either N class indices or N×C one-hot rows (the form a
single-label dataset stores; a row of NaN, or index −1, is an unknown label and is left out of every metric);
``scores`` is N×C, the model's softmax probabilities. The predicted class is the argmax of a row (the first of
tied maxima, as numpy's ``argmax``). ``target`` is the attacked class index t.

The backdoor metrics follow BackdoorBench (Wu et al., NeurIPS 2022 Datasets and Benchmarks): the backdoor test set
is every triggered test image whose true class is not the target (all-to-one), or every triggered test image
(all-to-all, where class y is attacked towards (y + 1) mod C).
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

from medbackdoor.errors import UserError


def class_indices(y_true: np.ndarray) -> np.ndarray:
    """The class index of each row: N indices as given, or the position of the 1 of each one-hot row; −1 where the
    label is unknown (index −1, or a row of NaN)."""
    y = np.asarray(y_true)
    if y.ndim == 1:
        if y.size and not np.issubdtype(y.dtype, np.integer) and not np.all(np.mod(y, 1) == 0):
            raise UserError("class labels must be whole numbers")
        return y.astype(np.int64)
    if y.ndim != 2:
        raise UserError(f"labels must be N class indices or N×C one-hot rows, got shape {y.shape}")
    known = np.isfinite(y).all(1)
    rows = np.where(np.isfinite(y), y, 0)
    if not np.all((rows[known] == 0) | (rows[known] == 1)) or not np.all(rows[known].sum(1) == 1):
        raise UserError("single-label rows must each hold exactly one 1 (or be all NaN: unknown)")
    return np.where(known, rows.argmax(1), -1).astype(np.int64)


def _check(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y, s = class_indices(y_true), np.asarray(scores, np.float64)
    if s.ndim != 2 or len(s) != len(y):
        raise UserError(f"scores must be N×C for {len(y)} labels, got shape {s.shape}")
    if y.size and y.max(initial=-1) >= s.shape[1]:
        raise UserError(f"a class index is {y.max()}, but the scores have {s.shape[1]} classes")
    return y, s


def predicted_class(scores: np.ndarray) -> np.ndarray:
    """The argmax class of each row of an N×C score array."""
    return np.asarray(scores).argmax(1)


def accuracy(y_true: np.ndarray, scores: np.ndarray) -> float:
    """The share of images (known labels) whose predicted class is their true class; NaN if none."""
    y, s = _check(y_true, scores)
    known = y >= 0
    return float((predicted_class(s[known]) == y[known]).mean()) if known.any() else float("nan")


def balanced_accuracy(y_true: np.ndarray, scores: np.ndarray) -> float:
    """The mean over the classes present in ``y_true`` of each class's recall (the share of its images predicted
    as it); NaN if no label is known."""
    y, s = _check(y_true, scores)
    known = y >= 0
    y, pred = y[known], predicted_class(s[known])
    present = np.unique(y)
    return float(np.mean([(pred[y == c] == c).mean() for c in present])) if len(present) else float("nan")


def per_class_auroc(y_true: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Each class's one-vs-rest AUROC (its score separating its images from the others); NaN for a class without
    both positive and negative images."""
    y, s = _check(y_true, scores)
    known = y >= 0
    y, s = y[known], s[known]
    return np.array([roc_auc_score(y == c, s[:, c]) if 0 < (y == c).sum() < len(y) else np.nan
                     for c in range(s.shape[1])])


def auroc_macro(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Macro one-vs-rest AUROC: the mean of :func:`per_class_auroc` over the classes that have one. For two
    classes this is the AUROC of the second class's score. NaN if no class has one."""
    y, s = _check(y_true, scores)
    if s.shape[1] == 2:
        known = y >= 0
        y, s = y[known], s[known]
        return float(roc_auc_score(y == 1, s[:, 1])) if 0 < (y == 1).sum() < len(y) else float("nan")
    values = per_class_auroc(y, s)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def _backdoor_rows(y: np.ndarray, target: int, all_to_all: bool) -> tuple[np.ndarray, np.ndarray]:
    """The backdoor test set (rows) and the class each row's trigger aims at."""
    known = y >= 0
    if all_to_all:
        return known, np.where(known, (y + 1), 0)
    return known & (y != target), np.full(len(y), int(target))


def asr(y_true: np.ndarray, score_triggered: np.ndarray, target: int | None, all_to_all: bool = False) -> float:
    """Attack success rate: among the backdoor test set (triggered images whose true class is not the target; all
    of them for all-to-all), the share predicted as the attacked class (the target; (y + 1) mod C for
    all-to-all). NaN if the set is empty."""
    y, s = _check(y_true, score_triggered)
    rows, aim = _backdoor_rows(y, -1 if target is None else target, all_to_all)
    if all_to_all:
        aim = aim % s.shape[1]
    elif target is None:
        raise UserError("an all-to-one ASR needs a target class")
    return float((predicted_class(s[rows]) == aim[rows]).mean()) if rows.any() else float("nan")


def racc(y_true: np.ndarray, score_triggered: np.ndarray, target: int | None, all_to_all: bool = False) -> float:
    """Robust accuracy (R-Acc): among the same backdoor test set as :func:`asr`, the share still predicted as
    their true class. NaN if the set is empty."""
    y, s = _check(y_true, score_triggered)
    if target is None and not all_to_all:
        raise UserError("an all-to-one R-Acc needs a target class")
    rows, _ = _backdoor_rows(y, -1 if target is None else target, all_to_all)
    return float((predicted_class(s[rows]) == y[rows]).mean()) if rows.any() else float("nan")


def single_label_metrics(y_true: np.ndarray, score_clean: np.ndarray, score_triggered: np.ndarray,
                         target: int | None, all_to_all: bool = False) -> dict[str, float]:
    """A single-label run's metrics: ``accuracy``, ``balanced_accuracy``, ``auroc_macro`` and
    ``per_class_auroc_clean`` of the clean test images, ``asr`` and ``racc`` of the triggered ones."""
    return {"accuracy": accuracy(y_true, score_clean), "balanced_accuracy": balanced_accuracy(y_true, score_clean),
            "auroc_macro": auroc_macro(y_true, score_clean),
            "asr": asr(y_true, score_triggered, target, all_to_all),
            "racc": racc(y_true, score_triggered, target, all_to_all),
            "per_class_auroc_clean": per_class_auroc(y_true, score_clean).tolist()}
