"""How a detection is scored against the truth when some scores are infinite or NaN.

A defense may give a sample an infinite score: +inf is the most suspicious score there is, −inf (and NaN, no
score) the least. :func:`detection_summary` must rank them so whatever the magnitude of the finite scores: above
the largest finite float, and below a finite score too large for "one less" to be a different float.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from medbackdoor.defenses.scoring import detection_summary


@pytest.mark.parametrize("unit", [1.0, 1e20, 1e300])
def test_infinite_scores_rank_by_hand_count(unit):
    """Positives score +inf and 2·unit, negatives 5·unit and NaN. Pairs (positive above negative = 1, tie = ½):
    (+inf, 5u) 1, (+inf, NaN) 1, (2u, 5u) 0, (2u, NaN) 1: AUROC 3/4. With no negative flagged (FPR 0 ≤ 1%)
    only +inf is above the threshold: TPR 1/2. Scaling the finite scores changes none of it."""
    out = detection_summary(np.array([1, 0, 1, 0]), np.array([np.inf, 5.0, 2.0, np.nan]) * unit)
    assert out["auroc"] == 0.75
    assert out["tpr_at_1pct_fpr"] == out["tpr_at_5pct_fpr"] == 0.5


def test_infinities_rank_beyond_the_largest_finite_floats():
    """Hand count: the positive +inf is above the negative at the largest float (AUROC 1), and the negative −inf
    below the positive at the most negative float (AUROC 1 again); −inf and NaN tie with each other (½)."""
    top, bottom = np.finfo(np.float64).max, -np.finfo(np.float64).max
    assert detection_summary(np.array([1, 0]), np.array([np.inf, top]))["auroc"] == 1.0
    assert detection_summary(np.array([1, 0]), np.array([bottom, -np.inf]))["auroc"] == 1.0
    assert detection_summary(np.array([1, 0]), np.array([-np.inf, np.nan]))["auroc"] == 0.5


@pytest.mark.parametrize("seed", range(3))
def test_infinite_scores_match_sklearn_on_large_finite_stand_ins(seed):
    """+inf replaced by hand with 1e9 (above every finite score), −inf and NaN with −1e9 (below every one):
    the AUROC and the TPR at 1% and 5% FPR are those sklearn computes on the stand-ins."""
    rng = np.random.default_rng(seed)
    n = 300
    y = rng.random(n) < 0.3
    s = rng.normal(size=n) + y
    special = rng.choice(n, 60, replace=False)
    s[special[:20]] = np.inf
    s[special[20:40]] = -np.inf
    s[special[40:]] = np.nan
    stand_in = s.copy()
    stand_in[special[:20]] = 1e9
    stand_in[special[20:]] = -1e9
    out = detection_summary(y, s)
    assert out["auroc"] == pytest.approx(roc_auc_score(y, stand_in), abs=1e-12)
    fprs, tprs, _ = roc_curve(y, stand_in)
    for key, rate in (("tpr_at_1pct_fpr", 0.01), ("tpr_at_5pct_fpr", 0.05)):
        assert out[key] == pytest.approx(tprs[fprs <= rate + 1e-12].max(), abs=1e-12)
    assert out["auroc"] > 0.5  # +inf is given to positives and negatives alike here: it has to rank on top
