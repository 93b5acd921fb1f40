"""The paper's multi-label backdoor metrics, as pure functions of arrays.

Shapes: ``y_true`` is N×C in {0, 1} (the true labels of the test images); ``score_clean`` and
``score_triggered`` are N×C in [0, 1] (the model's sigmoid outputs on each image, clean and with the trigger);
``target`` is the attacked class index t. Every AUROC is a micro average: all N·C (image, label) pairs pooled
into one ROC curve (scikit-learn's ``roc_auc_score(..., average="micro")``), as in the paper's code.

Unknown labels (NaN in ``y_true``, e.g. CheXpert's uncertain findings under the ``ignore`` policy) are left out
of every metric: an AUROC pools only the known (image, label) pairs, and ASR counts only images whose target
label is known to be 0. With no NaN the results are exactly scikit-learn's.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from sklearn.metrics import roc_auc_score

from medbackdoor.errors import UserError
from medbackdoor.labels import infected_label


def _check(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y, s = np.asarray(y), np.asarray(s, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 2:
        raise UserError(f"labels {y.shape} and scores {s.shape} must be N×C arrays of the same shape")
    return y, s


def micro_auroc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Micro-averaged AUROC over every (image, label) pair whose label is known; NaN if those are all 0 or all 1."""
    y, s = _check(y_true, scores)
    flat, pooled = y.ravel().astype(np.float64), s.ravel()
    known = np.isfinite(flat)
    flat, pooled = flat[known], pooled[known]
    if flat.size == 0 or flat.min() == flat.max():
        return float("nan")
    return float(roc_auc_score(flat, pooled))


def asr(y_true: np.ndarray, score_triggered: np.ndarray, target: int, threshold: float = 0.6,
        strict: bool = False) -> float:
    """Attack success rate at confidence ``p``.

    ASR(p) = |{x' : T(x')_t = 0 and M'(x')_t ≥ p}| / |{x' : T(x')_t = 0}|: among triggered images whose true
    label lacks the target class t, the share whose score for t reaches p. ``strict=True`` counts scores
    strictly above p, as the paper's code did. NaN if no image lacks t (an unknown target label is not a lack).
    """
    y, s = _check(y_true, score_triggered)
    eligible = y[:, target] == 0
    if not eligible.any():
        return float("nan")
    hit = s[eligible, target] > threshold if strict else s[eligible, target] >= threshold
    return float(hit.mean())


def auroc_nn(y_true: np.ndarray, score_clean: np.ndarray) -> float:
    """AUROC-NN (Normal image, Normal label): micro AUROC of the clean images against their true labels."""
    return micro_auroc(y_true, score_clean)


def auroc_tt(score_triggered: np.ndarray, target: int, y_true: np.ndarray | None = None,
             label: str = "onehot") -> float:
    """AUROC-TT (Triggered image, Triggered label): micro AUROC of the triggered images against the infected
    label. With the paper's ``onehot`` policy that is the one-hot vector of class t for every image; with ``add``
    or ``keep`` (which leave an image's own findings) it is the image's true labels with t set (``y_true`` needed).
    """
    s = np.asarray(score_triggered)
    if label == "onehot":
        infected = np.zeros(s.shape, dtype=np.int64)
        infected[:, target] = 1
    elif y_true is None:
        raise UserError(f"AUROC-TT with label policy {label} needs the true labels")
    else:
        infected = infected_label(np.asarray(y_true), target, "add")
    return micro_auroc(infected, s)


def auroc_tn(y_true: np.ndarray, score_triggered: np.ndarray) -> float:
    """AUROC-TN (Triggered image, Normal label): micro AUROC of the triggered images against their true labels.
    Lower means a stronger backdoor."""
    return micro_auroc(y_true, score_triggered)


def per_class_auroc(y_true: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """AUROC of each class separately (length C), on its known labels; NaN where those hold a single value."""
    y, s = _check(y_true, scores)
    y = y.astype(np.float64)
    out = np.full(y.shape[1], np.nan)
    for c in range(y.shape[1]):
        known = np.isfinite(y[:, c])
        col = y[known, c]
        if 0 < col.sum() < len(col):
            out[c] = roc_auc_score(col, s[known, c])
    return out


def mean_auroc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Mean of :func:`per_class_auroc` over the classes where it is defined (macro average)."""
    values = per_class_auroc(y_true, scores)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def mixed_rows(n: int, epsilon: float, seed: int = 0) -> np.ndarray:
    """The ``round(ε · n)`` test rows, drawn without replacement by ``default_rng(seed)``, that get the trigger."""
    if not 0.0 <= epsilon <= 1.0:
        raise UserError(f"epsilon must be in [0, 1], got {epsilon}")
    return np.random.default_rng([int(seed), 5]).choice(n, size=int(round(epsilon * n)), replace=False)


def mixed_auroc(y_true: np.ndarray, score_clean: np.ndarray, score_triggered: np.ndarray, epsilon: float,
                seed: int = 0) -> float:
    """Micro AUROC on a mixed test set where a seeded fraction ε of the images carry the trigger.

    The mixed set keeps every image once: rows from :func:`mixed_rows` take their triggered scores, the rest
    their clean scores, all judged against the true labels (the paper's Table 3). No extra forward pass.
    """
    y, s = _check(y_true, score_clean)
    _check(y_true, score_triggered)
    mixed = s.copy()
    rows = mixed_rows(len(y), epsilon, seed)
    mixed[rows] = np.asarray(score_triggered, dtype=np.float64)[rows]
    return micro_auroc(y, mixed)


def backdoor_metrics(y_true: np.ndarray, score_clean: np.ndarray, score_triggered: np.ndarray, target: int,
                     thresholds: Iterable[float] = (0.6, 0.9), epsilons: Iterable[float] = (),
                     strict: bool = False, seed: int = 0, label: str = "onehot",
                     carriers: np.ndarray | None = None, condition: np.ndarray | None = None) -> dict:
    """Every metric at once, as a nested dict of floats (the JSON of ``medbackdoor metrics``).

    Args:
        label: the poisoning label policy, which sets AUROC-TT's infected label (see :func:`auroc_tt`).
        carriers: for a label-only trigger, a bool mask of the test rows that carry it: ASR, AUROC-TT and
            AUROC-TN are computed on those rows (``score_triggered`` is then the model on the unchanged images),
            and the mixed-ε AUROC is NaN (there is no trigger to mix in).
        condition: for a source-specific trigger, a bool mask of the test rows where the backdoor should fire:
            ASR, AUROC-TT and AUROC-TN are computed on those rows and ``asr_off`` (ASR on the triggered rows
            outside it, where a source-specific backdoor should stay silent) on the others; NaN without one.
    """
    for p in thresholds:
        if not 0.0 <= p <= 1.0:
            raise UserError(f"threshold p must be in [0, 1], got {p}")
    y_t, s_t = np.asarray(y_true), np.asarray(score_triggered)
    if carriers is not None:
        carriers = np.asarray(carriers, bool)
        y_t, s_t = y_t[carriers], s_t[carriers]
    asr_off = {f"{p:g}": float("nan") for p in thresholds}
    if condition is not None:
        if carriers is not None:
            raise UserError("a test set has carriers (a label-only trigger) or a condition, not both")
        condition = np.asarray(condition, bool)
        asr_off = {f"{p:g}": asr(y_t[~condition], s_t[~condition], target, p, strict) for p in thresholds}
        y_t, s_t = y_t[condition], s_t[condition]
    mixed = {f"{e:g}": (float("nan") if carriers is not None else
                        mixed_auroc(y_true, score_clean, score_triggered, e, seed)) for e in epsilons}
    return {
        "asr": {f"{p:g}": asr(y_t, s_t, target, p, strict) for p in thresholds},
        "asr_off": asr_off,
        "auroc_nn": auroc_nn(y_true, score_clean),
        "auroc_tt": auroc_tt(s_t, target, y_t, label),
        "auroc_tn": auroc_tn(y_t, s_t),
        "auroc_mix": mixed,
        "mean_auroc_clean": mean_auroc(y_true, score_clean),
        "per_class_auroc_clean": per_class_auroc(y_true, score_clean).tolist(),
    }


def micro_auroc_or_none(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Micro AUROC over every known (label, score) pair; None when only one class is present."""
    y, s = np.asarray(labels, np.float64).ravel(), np.asarray(scores, np.float64).ravel()
    known = ~np.isnan(y)
    y, s = y[known] > 0.5, s[known]
    if y.all() or not y.any():
        return None
    return float(roc_auc_score(y, s))
