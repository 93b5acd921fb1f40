"""``activation-clustering``: Activation Clustering (Chen et al., 2018), one-vs-rest per finding.

The paper, per class: reduce the penultimate activations to 10 dimensions (ICA), split them with 2-means and decide
whether one cluster is poison: by its relative size (a cluster holding at most ~35% of the class; the reference
implementation in IBM's ART uses 0.35), by silhouette score, or by exclusionary reclassification.

Here, per finding group (one-vs-rest, see :mod:`medbackdoor.defenses.spectral`): centre the group's training features,
project them on their top ``dims`` principal directions (PCA), run 2-means (scikit-learn ``KMeans``, ``n_init=10``,
seeded) and compute the silhouette score (on at most 2,000 samples, seeded).

PCA vs the paper's ICA: FastICA's output is a rotation of the whitened top-``dims`` PCA scores and 2-means is
rotation-invariant, so ``whiten: true`` clusters exactly as the paper's ICA pipeline would (up to k-means
initialisation). The default ``whiten: false`` clusters the raw PCA scores, dominated by the top directions. Which is
better depends on where the poison lies. When it dominates the top directions, unwhitened 2-means isolates it, and
whitening, which weighs every direction alike, can lose it to a balanced split of the noise directions. When it lies
beyond the top directions, only whitening finds it. (Measurements on planted features:
docs/results/defenses-history.md; the choice of the default: docs/results/defenses-tuning.md.)

One cluster is the *suspect*:

* ``rule: faithful`` — the smaller cluster; it is flagged when its share of the group is below ``size``
  (relative-size analysis). Fails when the poison is the majority of its group (the smaller cluster is then the
  clean one).
* ``rule: holdout`` (default) — the clean holdout samples of the finding are assigned to the nearest centroid.
  The suspect is the cluster whose training share exceeds its holdout share (clean data lands in both clusters in
  proportion; poison has no holdout counterpart). It is flagged when the split is real (silhouette ≥
  ``silhouette``) *and* the holdout significantly under-fills it: a one-sided binomial test rejects "at least
  ``1 − excess`` of the suspect cluster is explained by clean data", i.e. ``P(X ≤ h | m, (1 − excess)·t) <
  significance`` with ``h`` holdout samples of ``m`` in the cluster and ``t`` its training share. Small holdout
  groups: ``fallback`` as for ``spectral``. The silhouette gate is off by default (``silhouette: 0``: only a
  non-split is refused): unwhitened, 2-means halving the top direction gives a clean group about the same
  silhouette as a poisoned one, and whitened the scores are low and close together, so the silhouette does not
  tell the groups apart; the holdout test does (see docs/results/defenses-history.md).

Continuous score per sample (flags are per cluster, the score is for ranking and AUROC): group evidence × soft
membership of the suspect cluster. Membership is ``sigmoid(2·u)`` with ``u = (‖z − c_other‖² − ‖z − c_suspect‖²) /
‖c_suspect − c_other‖²`` (+1 at the suspect centroid, −1 at the other, 0 on the boundary); the evidence is, under the
holdout rule, the excess share ``1 − (h + 1)/(m·t + 1)`` clipped to [0, 1] (≈1 when no clean sample falls in the
suspect cluster, ≈0 when the holdout fills it as expected; add-one smoothed so a tiny holdout gives weak evidence)
and, under the faithful rule, the silhouette score clipped at 0. The ``margin`` column holds ``u``.
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit
from scipy.stats import binom
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score
from threadpoolctl import threadpool_limits

from medbackdoor.defenses.base import DEFENSES, Defender
from medbackdoor.defenses.spectral import (
    FindingGroupDefense,
    Group,
    GroupResult,
    _check_int,
    _check_number,
    top_directions,
)
from medbackdoor.errors import UserError

SILHOUETTE_SAMPLE = 2000


@DEFENSES.register("activation-clustering")
class ActivationClustering(FindingGroupDefense):
    """Activation Clustering (Chen et al., "Detecting Backdoor Attacks on Deep Neural Networks by Activation
    Clustering", SafeAI@AAAI 2019, arXiv:1811.03728).

    Changed for multi-label: one-vs-rest finding groups instead of softmax classes (max of standardised scores,
    union of flags); PCA instead of ICA (``whiten: true`` gives ICA's 2-means geometry); a continuous per-sample
    score (evidence × soft cluster membership) for AUROC; and a default ``holdout`` rule that picks the poisoned
    cluster as the one the clean holdout under-fills (binomial test) instead of the smaller one, which assumes a
    poisoned minority. See the module docstring.

    Args:
        rule: ``holdout`` (default) or ``faithful`` (smaller cluster, relative-size analysis).
        dims: PCA dimensions before 2-means (default 10, the paper's).
        size: faithful rule: the smaller cluster is flagged when its share of the group is below this
            (default 0.35, ART's).
        silhouette: holdout rule: minimum silhouette score for the split to count (default 0: the holdout
            test does the work).
        excess: holdout rule: the share of the suspect cluster that clean data must fail to explain (default 0.5).
        significance: holdout rule: level of the one-sided binomial test (default 0.05; its null hypothesis is
            "half the cluster is clean", so pure sampling noise in a clean group almost never reaches it).
        whiten: scale the PCA scores to unit variance before 2-means (default false; true = the paper's ICA
            geometry; see the module docstring).
        min_group: as for ``spectral`` (default 10).
        min_holdout: as for ``spectral`` (default 5).
        fallback: as for ``spectral`` (default all).
    """

    paper = ("Chen et al., Detecting Backdoor Attacks on Deep Neural Networks by Activation Clustering, "
             "SafeAI@AAAI 2019")
    changes = ("one-vs-rest finding groups (max of standardised scores, union of flags); PCA instead of ICA (the "
               "same 2-means geometry with whiten: true); continuous score = evidence × soft cluster membership; "
               "default rule picks the cluster the clean holdout under-fills (binomial test) instead of the smaller")
    label = "activation-clustering"
    raw_column = "margin"
    stream = 2000

    def __init__(self, rule: str = "holdout", dims: int = 10, size: float = 0.35, silhouette: float = 0.0,
                 excess: float = 0.5, significance: float = 0.05, min_group: int = 10, min_holdout: int = 5,
                 fallback: str = "all", whiten: bool = False) -> None:
        self._check_common(rule, min_group, min_holdout, fallback)
        _check_int(self.label, "dims", dims, 1)
        _check_number(self.label, "size", size, 0.0, 0.5, hi_open=False)
        _check_number(self.label, "silhouette", silhouette, -1.0, 1.0, lo_open=False, hi_open=False)
        _check_number(self.label, "excess", excess, 0.0, 1.0, lo_open=False)
        _check_number(self.label, "significance", significance, 0.0, 1.0)
        self.dims, self.size, self.silhouette = dims, float(size), float(silhouette)
        if not isinstance(whiten, bool):
            raise UserError(f"{self.label} whiten must be true or false, got {whiten!r}")
        self.excess, self.significance, self.whiten = float(excess), float(significance), whiten

    def score_group(self, d: Defender, group: Group, x: np.ndarray, h: np.ndarray | None,
                    seed: int) -> GroupResult:
        n = len(x)
        mean = x.mean(0, dtype=np.float64)
        xc = x - mean.astype(x.dtype)
        v = top_directions(xc, min(self.dims, n - 1), seed)
        z = xc @ v.T
        scale = z.std(0) if self.whiten else np.ones(z.shape[1])
        scale[scale <= 1e-12] = 1.0
        z /= scale
        none = GroupResult(np.zeros(n), np.zeros(n, bool), np.zeros(n), {"split": False})
        if not np.any(z.std(0) > 1e-12):  # all samples alike: nothing to split
            return none
        with threadpool_limits(1, user_api="openmp"):  # 2-means on n×10 is cheap; threads only oversubscribe
            km = KMeans(2, n_init=10, random_state=seed).fit(z)
        labels, centres = km.labels_, km.cluster_centers_
        sizes = np.bincount(labels, minlength=2)
        if sizes.min() == 0:
            return none
        sample = SILHOUETTE_SAMPLE if n > SILHOUETTE_SAMPLE else None
        sil = float(silhouette_score(z, labels, sample_size=sample, random_state=seed))
        shares = sizes / n
        info = {"split": True, "dims": int(v.shape[0]), "silhouette": sil, "cluster_sizes": sizes.tolist()}
        if self.rule == "faithful":
            suspect = int(np.argmin(sizes))
            evidence = max(sil, 0.0)
            flag_cluster = bool(shares[suspect] < self.size)
            info.update({"suspect_share": float(shares[suspect])})
        else:
            zh = (h - mean.astype(h.dtype)) @ v.T / scale
            near = np.argmin(((zh[:, None, :] - centres[None]) ** 2).sum(-1), 1)
            m = len(zh)
            hold = np.bincount(near, minlength=2)
            gap = shares - hold / m
            if abs(gap[0] - gap[1]) > 1e-12:
                suspect = int(np.argmax(gap))
            else:  # as many holdout samples as expected in both: the centroid farther from the holdout is suspect
                suspect = int(np.argmax(((centres - zh.mean(0)) ** 2).sum(1)))
            t, k = float(shares[suspect]), int(hold[suspect])
            evidence = float(np.clip(1.0 - (k + 1.0) / (m * t + 1.0), 0.0, 1.0))
            p_value = float(binom.cdf(k, m, (1.0 - self.excess) * t))
            flag_cluster = bool(sil >= self.silhouette and p_value < self.significance)
            info.update({"suspect_share": t, "holdout_share": k / m, "p_value": p_value, "evidence": evidence})
        other = 1 - suspect
        gap2 = float(((centres[suspect] - centres[other]) ** 2).sum())
        u = (((z - centres[other]) ** 2).sum(1) - ((z - centres[suspect]) ** 2).sum(1)) / max(gap2, 1e-12)
        flags = (labels == suspect) & flag_cluster
        info["flagged_cluster"] = flag_cluster
        return GroupResult(evidence * expit(2.0 * u), flags, u, info)
