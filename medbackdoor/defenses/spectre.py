"""``spectre``: SPECTRE (Hayase, Kong, Somani & Oh, ICML 2021), one-vs-rest per finding — a compact version.

The paper, per class: project the representations on their top-k principal directions, estimate the *clean* mean
and covariance robustly, whiten with them, score each sample with the QUantum Entropy (QUE) score and remove the top
``1.5·ε·n``. With the whitened samples ``r_i`` and their second moment ``Σ̃ = mean(r rᵀ)``::

    Q = exp(α·(Σ̃ − I) / (‖Σ̃‖₂ − 1)),    τ_i = r_iᵀ Q r_i / tr(Q)        (α = 4)

Q interpolates between the top eigen-direction of Σ̃ (α → ∞: a spectral-signature score after whitening) and all
directions (α → 0: the Mahalanobis norm). If no direction has variance above 1 (``‖Σ̃‖₂ ≤ 1``), Q = I.

Here, per finding group (one-vs-rest, see :mod:`medbackdoor.defenses.spectral`): centre the group's training features
and project them on their top ``k = min(dims, D, (n − 1)//2)`` right singular vectors. Then:

* ``rule: faithful`` — robust estimate from the training group alone: trimmed concentration steps (MCD-style C-steps
  from the all-samples start): mean and Ledoit–Wolf covariance of the selection, keep the ``max(1 − 2·eps, 1/2)``
  share of the group with the smallest Mahalanobis distance, repeat until the selection is stable (≤ 30 steps).
  Whiten with it, QUE, remove the top ``round(1.5·eps·n)`` τ. Assumes a poisoned minority: when the poison is the
  majority the "robust" estimate describes the poison.
* ``rule: holdout`` (default) — the trimming is anchored on the clean holdout instead of on eps: start from the
  mean and Ledoit–Wolf covariance of the holdout samples of the finding; three times, keep the training samples
  whose Mahalanobis distance is at most the holdout's ``keep`` quantile under the current estimate and re-estimate
  from them (if fewer than ``max(2k, 10)`` training samples are kept, the current estimate stays). Whiten, QUE as
  above (Σ̃ from the training group, about the robust mean), and flag ``τ > max(min_que, the holdout's (1 − fpr)
  quantile of τ)`` (``min_que``: a floor, see the class). The holdout's own τ are jackknifed: each holdout
  sample is scored under the estimate anchored on the *other* holdout samples (leave-one-out, or one of at most
  ``JACKKNIFE_BLOCKS`` blocks left out), so it is out-of-sample for the estimate, as a scored training sample is.
  Scored under the estimate anchored on itself, a holdout sample sits closer than any new one (the estimate of a
  small holdout group in 32 dimensions often stays the holdout's own), and clean training samples are then
  flagged well above the nominal rate (docs/results/defenses-tuning.md has the measurement).
  Cross-fitted (``folds``, default 2, as in ``spectral``): the directions, the estimate and Q that score one part
  of the group are fit on the other part(s), so clean training samples and holdout samples are alike to them and
  the holdout-calibrated threshold means the same for both.
  Small holdout groups: ``fallback`` as for ``spectral``.

Standardised score (maxed over groups): τ divided by the group's cut (the threshold, or under the faithful rule the
τ of the last removed sample); the ``que`` column holds τ.

Simplifications against the official code (SewoongLab/spectre-defense): k is fixed (``dims``) instead of searched
over {1, 4, …, 64} by the QUE operator score; the robust covariance is trimmed concentration steps (faithful) or the
holdout-anchored trimming (holdout) instead of the DKK17 filter (scikit-learn's MinCovDet, the textbook robust
estimator, took 6 minutes on one 20k × 32 group); the data are centred at the robust mean.
"""

from __future__ import annotations

import numpy as np
from sklearn.covariance import ledoit_wolf

from medbackdoor.defenses.base import DEFENSES, Defender
from medbackdoor.defenses.spectral import (
    FindingGroupDefense,
    Group,
    GroupResult,
    _check_int,
    _check_number,
    crossfit,
    cut_count,
    holdout_members,
    one_fold_each,
    scaled,
    top_cut,
    top_directions,
)

MAX_CSTEPS = 30
HOLDOUT_STEPS = 3
JACKKNIFE_BLOCKS = 20  # holdout reference sets up to this size are scored leave-one-out, larger ones in 20 blocks


def estimate(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and Ledoit–Wolf covariance (well conditioned even with fewer samples than dimensions)."""
    mu = z.mean(0)
    if len(z) < 2:
        return mu, np.eye(z.shape[1])
    return mu, ledoit_wolf(z - mu, assume_centered=True)[0]


def inv_sqrt(cov: np.ndarray) -> np.ndarray:
    """Symmetric Σ^(-1/2), eigenvalues floored at 1e-10 of the largest."""
    vals, vecs = np.linalg.eigh(cov)
    vals = np.maximum(vals, max(vals.max(), 1e-300) * 1e-10)
    return (vecs / np.sqrt(vals)) @ vecs.T


def mahalanobis2(z: np.ndarray, mu: np.ndarray, white: np.ndarray) -> np.ndarray:
    return (((z - mu) @ white) ** 2).sum(1)


def trimmed_estimate(z: np.ndarray, keep: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Concentration steps: re-estimate on the ``keep`` most central samples until the selection is stable."""
    selected = np.ones(len(z), bool)
    steps = 0
    while steps < MAX_CSTEPS:
        steps += 1
        mu, cov = estimate(z[selected])
        d2 = mahalanobis2(z, mu, inv_sqrt(cov))
        new = np.zeros(len(z), bool)
        new[np.argsort(d2, kind="stable")[:keep]] = True
        if np.array_equal(new, selected):
            break
        selected = new
    mu, cov = estimate(z[selected])
    return mu, cov, {"kept_train": int(selected.sum()), "steps": steps}


def holdout_estimate(z: np.ndarray, zh: np.ndarray, keep: float, min_kept: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Start from the holdout's estimate; keep training samples within the holdout's ``keep`` quantile, re-estimate."""
    mu, cov = estimate(zh)
    source, kept = "holdout", 0
    for _ in range(HOLDOUT_STEPS):
        white = inv_sqrt(cov)
        selected = mahalanobis2(z, mu, white) <= np.quantile(mahalanobis2(zh, mu, white), keep)
        if selected.sum() < min_kept:
            break
        mu, cov = estimate(z[selected])
        source, kept = "train", int(selected.sum())
    return mu, cov, {"estimate_from": source, "kept_train": kept}


def que_weights(r: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Eigenvectors of Σ̃ = mean(r rᵀ) and the QUE weights exp(α(λ − 1)/(λ_max − 1)) (all 1 if λ_max ≤ 1)."""
    vals, vecs = np.linalg.eigh(r.T @ r / len(r))
    top = float(vals.max())
    if top - 1.0 <= 1e-9:
        return vecs, np.ones(len(vals)), top
    return vecs, np.exp(alpha * (vals - 1.0) / (top - 1.0)), top


def que_scores(r: np.ndarray, vecs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """τ_i = r_iᵀ Q r_i / tr(Q) with Q = V diag(weights) Vᵀ."""
    return ((r @ vecs) ** 2 @ weights) / weights.sum()


@DEFENSES.register("spectre")
class Spectre(FindingGroupDefense):
    """SPECTRE (Hayase, Kong, Somani & Oh, "SPECTRE: Defending Against Backdoor Attacks Using Robust Statistics",
    ICML 2021): robust covariance estimation, whitening and the QUantum Entropy (QUE) outlier score.

    Changed for multi-label: one-vs-rest finding groups instead of softmax classes (max of standardised scores,
    union of flags); a default ``holdout`` rule that anchors the robust estimate on the clean holdout (trimming at
    the holdout's own quantile instead of at the assumed poison fraction) and calibrates the flag threshold on
    holdout QUE scores instead of removing each group's top ``1.5·ε·n``. Compact: fixed k, no DKK17 filter (see the
    module docstring).

    The floor (``min_que``, holdout rule): the flag threshold is ``max(min_que, calibrated)``, the calibrated
    threshold being the conformal one of the holdout maxima (``calibration: sample``) or each group's holdout
    quantile of τ (``calibration: group``). The calibrated threshold rests on the holdout alone, a few to some
    hundred samples per group in k dimensions; where the estimate is anchored on few of them, their τ can be low
    for reasons of the estimate rather than of the data, and the threshold with them. The floor keeps a sample
    from being flagged below τ = 9: where Q picks a single whitened direction τ = r² there, and 9 is three
    standard deviations, which 0.27% of normal clean samples exceed. It only ever raises the threshold: where
    it binds, fewer clean samples are flagged than ``fpr`` allows (and fewer poisoned ones), and the rate is no
    longer the calibrated one. ``info`` says how often: ``floor``, ``floor_binds`` (how many of the compared
    thresholds the floor replaced) and ``floor_groups`` (how many were compared: the one threshold under
    ``calibration: sample``, one per group and fold under ``group``).

    Args:
        rule: ``holdout`` (default) or ``faithful`` (trimmed robust estimate, top-1.5·ε·n removal).
        dims: k, the principal directions kept (default 32; capped at (n − 1)//2 for a group of n).
        alpha: the QUE parameter α > 0 (default 4, the paper's).
        eps: faithful rule: assumed upper bound on the poisoned share of a group, in (0, 2/3) (default 0.05);
            the robust estimate keeps max(1 − 2·eps, 1/2) of the group and 1.5·eps is removed.
        keep: holdout rule: the holdout quantile of the Mahalanobis distance within which training samples are
            kept for the estimate, in (0, 1] (default 0.9).
        fpr: holdout rule: the threshold is at least the holdout's own (1 − fpr) quantile of τ (default 0.01).
        min_que: holdout rule: the floor under the calibrated threshold, a τ (default 9: three standard
            deviations along a single dominant direction; 0 for none): the flag threshold is
            ``max(min_que, calibrated)``, see "The floor" above.
        calibration: holdout rule: ``sample`` (the default: one conformal threshold per training sample, see
            :func:`medbackdoor.defenses.spectral.combine_per_sample`) or ``group`` (per group, as above).
        folds: holdout rule: cross-fitting folds (default 2: the directions, estimate and Q that score a half of
            the group are fit on the other half; 1 = in-sample, as the paper).
        min_group: as for ``spectral`` (default 10).
        min_holdout: as for ``spectral`` (default 5).
        fallback: as for ``spectral`` (default all).
    """

    paper = ("Hayase, Kong, Somani & Oh, SPECTRE: Defending Against Backdoor Attacks Using Robust Statistics, "
             "ICML 2021")
    changes = ("one-vs-rest finding groups, a sample scored by the max over its groups; default rule anchors the "
               "robust estimate on the clean holdout and flags above one conformal threshold per sample, set on "
               "the holdout samples' max QUE score over their own groups, each holdout sample scored under the "
               "estimate anchored on the others (jackknife; per-group thresholds: calibration group), instead of "
               "removing each group's top 1.5·eps·n; compact: fixed k, trimmed estimate instead of the DKK17 filter")
    label = "spectre"
    raw_column = "que"
    revision = 2  # 2: the holdout's QUE scores jackknifed
    stream = 3000

    def __init__(self, rule: str = "holdout", dims: int = 32, alpha: float = 4.0, eps: float = 0.05,
                 keep: float = 0.9, fpr: float = 0.01, min_que: float = 9.0, folds: int = 2, min_group: int = 10,
                 min_holdout: int = 5, fallback: str = "all", calibration: str = "sample") -> None:
        self._check_common(rule, min_group, min_holdout, fallback)
        self._check_calibration(calibration)
        _check_int(self.label, "folds", folds, 1)
        self.folds = folds
        _check_int(self.label, "dims", dims, 1)
        _check_number(self.label, "alpha", alpha, 0.0, np.inf)
        _check_number(self.label, "eps", eps, 0.0, 2.0 / 3.0)
        _check_number(self.label, "keep", keep, 0.0, 1.0, hi_open=False)
        _check_number(self.label, "fpr", fpr, 0.0, 1.0)
        _check_number(self.label, "min_que", min_que, 0.0, np.inf, lo_open=False)
        self.dims, self.alpha, self.eps, self.keep = dims, float(alpha), float(eps), float(keep)
        self.fpr, self.min_que = float(fpr), float(min_que)

    def score_group(self, d: Defender, group: Group, x: np.ndarray, h: np.ndarray | None,
                    seed: int) -> GroupResult:
        n = len(x)
        if self.rule == "faithful":
            z, _ = self._reduce(x, x, seed)
            k = z.shape[1]
            mu, cov, info = trimmed_estimate(z, max(k + 1, int(np.ceil(max(1.0 - 2.0 * self.eps, 0.5) * n))))
            white = inv_sqrt(cov)
            r = (z - mu) @ white
            vecs, weights, top = que_weights(r, self.alpha)
            tau = que_scores(r, vecs, weights)
            flags, cut = top_cut(tau, cut_count(self.eps, n))
            info.update({"dims": int(k), "top_eigenvalue": top, "cut_que": cut})
            return GroupResult(scaled(tau, cut), flags, tau, info)
        tau, threshold, folds, tau_folds = np.zeros(n), np.ones(n), [], []
        for fit, part in crossfit(n, self.folds, seed):
            z, (zp, zh) = self._reduce(x[fit], (x[part], h), seed)
            k = z.shape[1]
            score, info, top = self._anchored(z, zh, k)
            tau[part] = score(zp)
            tau_h = np.empty(len(zh))
            for block in np.array_split(np.arange(len(zh)), min(len(zh), JACKKNIFE_BLOCKS)):
                rest = np.ones(len(zh), bool)
                rest[block] = False
                tau_h[block] = self._anchored(z, zh[rest], k)[0](zh[block])
            tau_folds.append(tau_h)
            calibrated = float(np.quantile(tau_h, 1.0 - self.fpr))
            threshold[part] = cut = max(self.min_que, calibrated)
            folds.append({**info, "dims": int(k), "top_eigenvalue": top, "threshold_que": cut,
                          "calibrated_que": calibrated, "holdout_flagged_share": float(np.mean(tau_h > cut))})
        members = holdout_members(d, group)
        return GroupResult(tau / threshold, tau > threshold, tau, {"folds": folds}, group.holdout[members],
                           one_fold_each(tau_folds, members), [f["calibrated_que"] for f in folds])

    def _anchored(self, z: np.ndarray, zh: np.ndarray, k: int):
        """The QUE score under the estimate anchored on holdout ``zh`` (whitening and Q from training ``z``)."""
        mu, cov, info = holdout_estimate(z, zh, self.keep, max(2 * k, 10))
        white = inv_sqrt(cov)
        vecs, weights, top = que_weights((z - mu) @ white, self.alpha)
        return (lambda q: que_scores((q - mu) @ white, vecs, weights)), info, top

    @property
    def floor(self) -> float:
        return self.min_que

    def _reduce(self, fit: np.ndarray, others, seed: int):
        """Centre on ``fit``'s mean, project ``fit`` and ``others`` on ``fit``'s top-k right singular vectors."""
        mean = fit.mean(0, dtype=np.float64).astype(fit.dtype)
        xc = fit - mean
        v = top_directions(xc, max(1, min(self.dims, (len(fit) - 1) // 2)), seed)
        if isinstance(others, tuple):
            return xc @ v.T, tuple((o - mean) @ v.T for o in others)
        return xc @ v.T, None
