"""Pure functions that score a defense against the truth (never called by a defense itself)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve


def tpr_at_fpr(y: np.ndarray, scores: np.ndarray, fpr: float) -> float:
    """The highest true-positive rate whose false-positive rate is at most ``fpr`` (NaN without both classes)."""
    y = np.asarray(y, bool)
    if y.all() or not y.any():
        return float("nan")
    fprs, tprs, _ = roc_curve(y, scores)
    return float(tprs[fprs <= fpr + 1e-12].max())


def ranks(scores: np.ndarray) -> np.ndarray:
    """Dense ranks (0 = lowest) of ``scores`` in float64: +inf above every finite score, −inf and NaN (no score)
    tied below every one, equal scores tied. AUROC and the ROC curve depend only on this order, and the ranks are
    finite, which scikit-learn requires."""
    s = np.nan_to_num(np.asarray(scores, np.float64), nan=-np.inf, posinf=np.inf, neginf=-np.inf)
    return np.unique(s, return_inverse=True)[1].reshape(s.shape).astype(np.float64)


def detection_summary(y: np.ndarray, scores: np.ndarray, flagged: np.ndarray | None = None) -> dict:
    """AUROC (positives = ``y``), TPR at 1% and 5% FPR, and the flag rule's precision and recall.

    Args:
        y: truth per item (poisoned sample, triggered input, backdoored label).
        scores: higher = more suspicious; +inf is the most suspicious, −inf and NaN the least (see :func:`ranks`).
        flagged: the method's own decisions (optional).
    """
    y = np.asarray(y, bool)
    scores = ranks(scores)
    both = y.any() and not y.all()
    out = {"n": int(len(y)), "positives": int(y.sum()),
           "auroc": float(roc_auc_score(y, scores)) if both else float("nan"),
           "tpr_at_1pct_fpr": tpr_at_fpr(y, scores, 0.01), "tpr_at_5pct_fpr": tpr_at_fpr(y, scores, 0.05)}
    if flagged is not None:
        flagged = np.asarray(flagged, bool)
        hits = int((flagged & y).sum())
        out.update({"flagged": int(flagged.sum()),
                    "precision": hits / int(flagged.sum()) if flagged.any() else float("nan"),
                    "recall": hits / int(y.sum()) if y.any() else float("nan"),
                    "false_positive_rate": int((flagged & ~y).sum()) / int((~y).sum()) if (~y).any() else float("nan")})
    return out
