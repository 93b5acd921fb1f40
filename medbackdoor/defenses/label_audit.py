"""``label-audit``: training label vectors that are far more frequent than a clean reference says they should be.

Not from one paper: the multi-label counterpart of checking a dataset's class balance. A poisoning attack that
writes one label vector (the paper's one-hot Atelectasis) or adds one finding to many images shifts the joint
distribution of label vectors. Each distinct label vector v gets the log-ratio of its training frequency to its
reference frequency (add-one smoothed):

    score(v) = log((n_train(v) + 1) / (N_train + K)) − log((n_ref(v) + 1) / (N_ref + K))

with K the number of distinct vectors seen in either. Every sample scores its vector's log-ratio. The flag rule
is a one-sided test per vector that accounts for the reference being a sample too: given the m = n_train(v) +
n_ref(v) copies of v in both sets, under "same distribution" n_train(v) ~ Binomial(m, N_train / (N_train +
N_ref)); a vector is flagged when that p-value is below ``alpha`` (Bonferroni over the vectors) and it is
over-represented.

Reference: the clean holdout (default), or ``reference: nih`` for the NIH ChestX-ray14 joint statistics shipped
with the package. Those statistics count the label vectors of all 112,120 NIH images, so on data drawn from NIH
(``nih``, ``nih-sample``, ``chestmnist``) they include the run's own training and test labels: that is knowledge
no defender has, and ``reference: nih`` is refused there. It stays for data whose labels only follow NIH's joint
distribution without being NIH's (``synthetic``, whose labels are drawn from these statistics).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import binom

from medbackdoor.defenses.base import DEFENSES, DataDefense, Defender, Detection
from medbackdoor.errors import UserError

NIH_DERIVED = ("nih", "nih-sample", "chestmnist")  # datasets whose images and labels are NIH ChestX-ray14's


def vector_keys(labels: np.ndarray) -> np.ndarray:
    """One string key per label vector ("0010…"), NaN (unknown) entries as "?"."""
    labels = np.asarray(labels, np.float64)
    chars = np.where(np.isnan(labels), "?", np.where(labels > 0.5, "1", "0"))
    return np.array(["".join(row) for row in chars])


@DEFENSES.register("label-audit")
class LabelAudit(DataDefense):
    paper = "none (dataset statistics); the multi-label counterpart of a class-balance check"
    changes = "works on the joint distribution of 14-finding label vectors rather than on single-label classes"

    def __init__(self, reference: str = "holdout", alpha: float = 0.01) -> None:
        if reference not in ("holdout", "nih"):
            raise UserError(f"label-audit reference must be holdout or nih, got {reference!r}")
        if not 0 < alpha < 1:
            raise UserError(f"label-audit alpha must be in (0, 1), got {alpha}")
        self.reference, self.alpha = reference, alpha

    def reference_counts(self, d: Defender) -> dict[str, float]:
        if self.reference == "holdout":
            keys, counts = np.unique(vector_keys(d.holdout_labels), return_counts=True)
            return dict(zip(keys.tolist(), counts.astype(float).tolist()))
        from medbackdoor.data.synthetic import nih_stats

        if d.dataset in NIH_DERIVED:
            raise UserError(f"label-audit reference nih counts the labels of every NIH image, this run's {d.dataset} "
                            "training and test labels among them (no defender knows those); use reference: holdout")
        stats = nih_stats()
        if list(stats["labels"]) != d.label_names:
            raise UserError("label-audit reference nih needs the 14 NIH findings in the CheXNet order; "
                            "use reference: holdout")
        return {key: float(count) for key, count in stats["combinations"]}

    def suspicion(self, d: Defender) -> Detection:
        keys = vector_keys(d.train_labels)
        uniq, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
        ref = self.reference_counts(d)
        n_ref = sum(ref.values())
        k = len(set(uniq.tolist()) | set(ref))
        n = len(keys)
        ref_counts = np.array([ref.get(u, 0.0) for u in uniq])
        p_train = (counts + 1.0) / (n + k)
        p_ref = (ref_counts + 1.0) / (n_ref + k)
        log_ratio = np.log(p_train) - np.log(p_ref)
        # P(X >= count) for X ~ Binomial(count + ref, n / (n + n_ref)): this many of the vector's copies falling in
        # the training set, if both sets came from one distribution (the conditional test of two Poisson counts)
        p_values = binom.sf(counts - 1, counts + np.round(ref_counts).astype(np.int64), n / (n + n_ref))
        flagged_vectors = p_values < self.alpha / len(uniq)
        flagged_vectors &= log_ratio > 0
        info = {"vectors": int(len(uniq)), "flagged_vectors": [
            {"vector": u, "findings": _names(u, d.label_names), "train": int(c), "reference": float(r),
             "log_ratio": float(lr)}
            for u, c, r, lr, f in zip(uniq, counts, ref_counts, log_ratio, flagged_vectors) if f]}
        return Detection(scores=log_ratio[inverse], flagged=flagged_vectors[inverse],
                         columns={"label_vector": keys}, info=info)


def _names(key: str, names: list[str]) -> str:
    found = [n for ch, n in zip(key, names) if ch == "1"]
    return "+".join(found) if found else "No Finding"
