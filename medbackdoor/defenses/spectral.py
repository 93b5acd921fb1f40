"""``spectral``: Spectral Signatures (Tran, Li & Madry, NeurIPS 2018), one-vs-rest per finding.

The paper, per class: centre the class's penultimate representations, take the top right singular vector ``v`` of
the centred matrix, score every sample by its squared projection ``((x − mean)·v)²`` and remove the top
``1.5·ε·n`` scores, ε being an upper bound on the fraction of poisoned samples in the class.

Multi-label (shared with ``activation-clustering`` and ``spectre``, see :class:`FindingGroupDefense`): the "class"
becomes a one-vs-rest *finding group*: group c = the training samples whose label vector has finding c positive
(a sample can be in several groups; a group of fewer than ``min_group`` samples is skipped). Each group is scored
on its own; a sample's score is the max of its groups' standardised scores (``group`` column: the finding that gave
it); a sample in no scored group gets the lowest score; ``flagged`` is the union of the groups' flags.

Two flag rules:

* ``rule: faithful`` — the paper's: per group, score ``z = |p − mean(p)| / std(p)`` (a monotone transform of the
  squared projection, so the same ranking), remove the top ``round(1.5·eps·n_group)`` (at least one).
  ``projection: uncentred`` scores ``|x·v|`` instead, as the authors' released code does (sweep name
  ``spectral-released``).
  It assumes the poisoned samples are a *minority* of the group: when they are the majority (the project's one-hot
  Atelectasis attack poisons 538 of 685 Atelectasis samples) the group mean sits in the poisoned cluster and the
  clean samples get the largest projections — the ranking is inverted.
* ``rule: holdout`` (default) — the clean holdout is the reference of what the group looks like without poison.
  The direction ``v`` is the same (top singular vector of the centred *training* group); the projections ``p`` of
  training and holdout group samples are compared with the holdout's: ``z = |p − median(p_holdout)| /
  (1.4826·MAD(p_holdout))``; a sample is flagged when ``z`` exceeds ``max(min_z, holdout's own (1 − fpr)
  quantile of z)``. Poisoned samples are far from the clean holdout whatever their share of the group.
  The holdout's own z are jackknifed (:func:`jackknife_z`): a holdout sample is measured from the median, and
  scaled by the MAD, of the *other* holdout samples, as a training sample is measured by a reference it is not
  part of; with itself in the median and MAD it sits nearer the centre than a new sample, and the quantile that
  sets the threshold would be too low. ``min_z`` is a floor under the calibrated threshold (see the class).
  Cross-fitted (``folds``, default 2): the group is split at random (seeded) and each part is scored with the
  direction (and mean) fit on the other part(s). A direction fit on the very samples it scores spreads their
  projections more than the holdout's (noticeably when the group has fewer samples than feature dimensions: on
  planted 300-dimensional data, 22 of 900 clean samples flagged in-sample, 8 cross-fitted), which would make the
  holdout-calibrated threshold too low. ``folds: 1`` scores in-sample, as the paper.
  When the holdout has fewer than ``min_holdout`` samples of the finding, ``fallback: all`` uses the whole holdout
  as the reference (a coarser reference: the finding's own signal is then part of the spread) and ``fallback: skip``
  skips the group; ``info.groups[*].reference`` says which was used.

The flag threshold under the holdout rule (``calibration``): ``sample`` (the default) sets one
threshold for the max of a training sample's raw scores over its groups, the conformal ``fpr`` threshold of the same
max taken by each holdout sample over the groups of its own findings (:func:`combine_per_sample`), so ``fpr`` is
a rate per training sample; ``group`` sets each group's threshold at its holdout samples' (1 − fpr) quantile, and a
sample is flagged by the union. With 5–40 holdout samples in a group that quantile is about the group's holdout
maximum, which a new clean sample exceeds with probability about 1/(n + 1), far above 1% (the measured rates are in
docs/results/defenses-tuning.md).

Standardised score (what is maxed over groups under ``calibration: group``; the sample rule maxes the raw
``z``): ``z`` divided by the group's cut (the holdout threshold, or under
the faithful rule the ``z`` of the last removed sample), so a group flags exactly its members scoring above 1
(holdout rule) or at least 1 (faithful rule, ties aside).
The ``z`` column holds the unscaled ``z`` of the group that gave the max.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from sklearn.utils.extmath import randomized_svd
from threadpoolctl import threadpool_limits

from medbackdoor.defenses.base import DEFENSES, DataDefense, Defender, Detection, fpr_threshold
from medbackdoor.errors import UserError

RULES = ("holdout", "faithful")
PROJECTIONS = ("centred", "uncentred")
FALLBACKS = ("all", "skip")
CENTRES = ("holdout", "anchored")
CALIBRATIONS = ("group", "sample")
MAD_TO_SD = 1.4826  # MAD × this = standard deviation for a normal distribution
EXACT_SVD_MAX = 256  # exact SVD up to this min(n, D); randomized (seeded) beyond
SMALL_GROUP = 1 << 22  # a group with at most this many feature values runs BLAS single-threaded (threads on small
# matrices only oversubscribe a busy machine: a 400×48 SVD took 0.7 s with two threads, 2.5 ms with one)


# --- shared by the three finding-group data defenses (spectral, activation-clustering, spectre) ---------------------

@dataclass
class Group:
    """One one-vs-rest finding group: training rows with the finding positive, and the clean reference rows."""

    finding: int
    name: str
    train: np.ndarray  # row indices into the training set
    holdout: np.ndarray | None  # row indices into the holdout (None under the faithful rule)
    reference: str  # "group" (holdout samples with the finding), "all" (whole holdout, fallback) or "none"


@dataclass
class GroupResult:
    """What a defense says about one group, per member (same order as ``Group.train``)."""

    scores: np.ndarray  # standardised (comparable across groups), ≥ 0, higher = more suspicious
    flagged: np.ndarray  # bool
    raw: np.ndarray  # the method's own score before standardisation
    info: dict = field(default_factory=dict)  # JSON-serialisable diagnostics
    holdout_rows: np.ndarray | None = None  # holdout rule: the holdout samples with the finding (row indices) …
    holdout_raw: np.ndarray | None = None  # … and their raw scores, each by one fold as a training sample is
    calibrated: list[float] | None = None  # holdout rule: each fold's calibrated threshold, before the floor


class FindingGroupDefense(DataDefense):
    """A data defense run per one-vs-rest finding group and combined by max (see the module docstring).

    Subclasses set ``label`` (the registered name, for messages), ``raw_column`` (the name of the raw-score column),
    ``stream`` (base of the random streams: group c uses ``d.rng(stream + c)``) and implement :meth:`score_group`.
    """

    label = ""
    raw_column = "raw"
    stream = 0
    floor: float | None = None  # the holdout rule's floor under the calibrated threshold (None: it has none)

    def _check_common(self, rule: str, min_group: int, min_holdout: int, fallback: str) -> None:
        if rule not in RULES:
            raise UserError(f"{self.label} rule must be holdout or faithful, got {rule!r}")
        _check_int(self.label, "min_group", min_group, 3)
        _check_int(self.label, "min_holdout", min_holdout, 2)
        if fallback not in FALLBACKS:
            raise UserError(f"{self.label} fallback must be all or skip, got {fallback!r}")
        self.rule, self.min_group, self.min_holdout, self.fallback = rule, min_group, min_holdout, fallback

    def groups(self, d: Defender) -> tuple[list[Group], list[dict]]:
        """The finding groups to score, and the skipped ones with the reason (labels only; no model call)."""
        train_pos = np.asarray(d.train_labels) > 0.5  # NaN (unknown) counts as not positive
        holdout = self.rule == "holdout"
        hold_pos = np.asarray(d.holdout_labels) > 0.5 if holdout else None
        n_hold = len(d.holdout_labels)
        groups, skipped = [], []
        for c, name in enumerate(d.label_names):
            train = np.flatnonzero(train_pos[:, c])
            if len(train) < self.min_group:
                skipped.append({"finding": name, "train": int(len(train)),
                                "reason": f"fewer than min_group={self.min_group} training samples"})
                continue
            if not holdout:
                groups.append(Group(c, name, train, None, "none"))
                continue
            rows, reference = np.flatnonzero(hold_pos[:, c]), "group"
            if len(rows) < self.min_holdout:
                if self.fallback == "skip" or n_hold < self.min_holdout:
                    skipped.append({"finding": name, "train": int(len(train)), "holdout": int(len(rows)),
                                    "reason": f"fewer than min_holdout={self.min_holdout} holdout samples"})
                    continue
                rows, reference = np.arange(n_hold), "all"
            groups.append(Group(c, name, train, rows, reference))
        return groups, skipped

    def seed(self, d: Defender, finding: int) -> int:
        """The integer seed of group ``finding`` (for scikit-learn's ``random_state``), from ``d.seed``."""
        return int(d.rng(self.stream + finding).integers(2**31 - 1))

    def score_group(self, d: Defender, group: Group, x: np.ndarray, h: np.ndarray | None,
                    seed: int) -> GroupResult:  # pragma: no cover - the hook
        """Score one group: ``x`` its training features (n×D), ``h`` its reference holdout features (or None)."""
        raise NotImplementedError

    def group_results(self, d: Defender) -> tuple[list[tuple[Group, GroupResult]], list[dict]]:
        """Every scored group with its result, and the skipped groups."""
        groups, skipped = self.groups(d)
        if not groups:
            return [], skipped
        x_all = np.asarray(d.train_features, np.float32)
        if len(x_all) != len(d.train_labels):
            raise RuntimeError(f"{len(x_all)} training features for {len(d.train_labels)} training labels")
        h_all = np.asarray(d.holdout_features, np.float32) if self.rule == "holdout" else None
        out = []
        for g in groups:
            x, h = x_all[g.train], h_all[g.holdout] if h_all is not None else None
            with threadpool_limits(1 if x.size <= SMALL_GROUP else None, user_api="blas"):
                out.append((g, self.score_group(d, g, x, h, self.seed(d, g.finding))))
        return out, skipped

    def suspicion(self, d: Defender) -> Detection:
        results, skipped = self.group_results(d)
        if self.rule == "holdout" and getattr(self, "calibration", "group") == "sample":
            return combine_per_sample(len(d.train_labels), len(d.holdout_labels), d.label_names, results, skipped,
                                      self.raw_column, self.fpr, self.floor)
        det = combine(len(d.train_labels), d.label_names, results, skipped, self.raw_column, self.rule)
        if self.rule == "holdout" and self.floor is not None:
            calibrated = [c for _, r in results for c in (r.calibrated or [])]
            det.info.update(floor_report(self.floor, calibrated))
        return det

    def _check_calibration(self, calibration: str) -> None:
        if calibration not in CALIBRATIONS:
            raise UserError(f"{self.label} calibration must be group or sample, got {calibration!r}")
        self.calibration = calibration


def holdout_members(d: Defender, group: Group) -> np.ndarray:
    """Positions in ``group.holdout`` of the holdout samples that have the finding (all of them unless the group
    fell back on the whole holdout): the holdout's counterparts of the group's training members."""
    return np.flatnonzero(np.asarray(d.holdout_labels)[group.holdout, group.finding] > 0.5)


def one_fold_each(per_fold: list[np.ndarray], positions: np.ndarray) -> np.ndarray:
    """Each holdout member's score from one fold (member ``j`` from fold ``j mod folds``), as each training sample
    is scored by the one fold it is not fit on."""
    stacked = np.stack(per_fold)
    return stacked[np.arange(len(positions)) % len(per_fold), positions]


def floor_report(floor: float, calibrated: list[float]) -> dict:
    """``info`` entries on the floor: its value; ``floor_binds``, how many of the ``calibrated`` thresholds are
    below it (there the flag threshold is the floor); ``floor_groups``, how many there are (one per group and
    fold under ``calibration: group``, the one threshold under ``calibration: sample``)."""
    return {"floor": float(floor), "floor_binds": int(sum(float(floor) > c for c in calibrated)),
            "floor_groups": len(calibrated)}


def combine_per_sample(n: int, n_holdout: int, names: list[str], results: list[tuple[Group, GroupResult]],
                       skipped: list[dict], raw_column: str, fpr: float, floor: float) -> Detection:
    """``calibration: sample``: one threshold for every training sample's max raw score over its groups.

    The holdout samples get the same statistic (max over the groups of their own findings, each scored as a
    training member is; a sample with no scored finding, training or holdout, gets −inf and is never flagged), and
    the threshold is ``max(floor, fpr_threshold(holdout maxima, fpr))``: the conformal threshold, so a clean
    training sample exchangeable with the holdout is flagged with probability at most ``fpr``: the rate is per
    *sample*, where ``calibration: group`` spends ``fpr`` in every group, on 5–40 holdout samples each.
    """
    train, best, count = _max_over_groups(n, results, [np.asarray(r.raw, np.float64) for _, r in results])
    hold = np.full(n_holdout, -np.inf)
    for _, r in results:
        if r.holdout_rows is not None and len(r.holdout_rows):
            hold[r.holdout_rows] = np.maximum(hold[r.holdout_rows], np.asarray(r.holdout_raw, np.float64))
    calibrated = fpr_threshold(hold, fpr)
    threshold = max(float(floor), calibrated)
    flagged = train > threshold
    per_group = [_group_entry(g, r, flagged[g.train].sum(),
                              holdout_members=0 if r.holdout_rows is None else int(len(r.holdout_rows)))
                 for g, r in results]
    info = {"rule": "holdout", "calibration": "sample", "threshold": threshold, "calibrated_threshold": calibrated,
            **floor_report(floor, [calibrated]), "holdout_samples": int(n_holdout),
            "holdout_scored": int(np.isfinite(hold).sum()), "holdout_above": int((hold > threshold).sum()),
            "scored_samples": int((count > 0).sum()), "flagged": int(flagged.sum()), "groups": per_group,
            "skipped": skipped}
    raw = np.where(count > 0, train, np.nan)
    return _detection(train, flagged, best, count, names, raw_column, raw, info)


def combine(n: int, names: list[str], results: list[tuple[Group, GroupResult]], skipped: list[dict],
            raw_column: str, rule: str) -> Detection:
    """Per sample: max of its groups' standardised scores (the lowest score if in none); flags: union."""
    scores, best, count = _max_over_groups(
        n, results, [np.nan_to_num(np.asarray(r.scores, np.float64), nan=0.0) for _, r in results])
    flagged = np.zeros(n, bool)
    raw = np.full(n, np.nan)
    for g, r in results:
        flagged[g.train] |= np.asarray(r.flagged, bool)
        mine = best[g.train] == g.finding  # the raw score of the group that gave the max
        raw[g.train[mine]] = np.asarray(r.raw, np.float64)[mine]
    per_group = [_group_entry(g, r, np.sum(r.flagged)) for g, r in results]
    info = {"rule": rule, "scored_samples": int((count > 0).sum()), "flagged": int(flagged.sum()),
            "groups": per_group, "skipped": skipped}
    return _detection(scores, flagged, best, count, names, raw_column, raw, info)


def _max_over_groups(n: int, results: list[tuple[Group, GroupResult]], values: list[np.ndarray]):
    """Per training sample: the max of ``values`` over its groups (−inf in none), the finding of the group that
    gave it (−1 in none; the first such group on a tie) and the number of its groups."""
    top = np.full(n, -np.inf)
    best = np.full(n, -1)
    count = np.zeros(n, np.int64)
    for (g, _), s in zip(results, values):
        count[g.train] += 1
        better = s > top[g.train]
        top[g.train[better]], best[g.train[better]] = s[better], g.finding
    return top, best, count


def _group_entry(g: Group, r: GroupResult, flagged, **extra) -> dict:
    """One group's line of ``info["groups"]``."""
    holdout = None if g.holdout is None else int(len(g.holdout))
    return {"finding": g.name, "train": int(len(g.train)), "holdout": holdout, "reference": g.reference, **extra,
            **r.info, "flagged": int(flagged)}


def _detection(scores, flagged, best, count, names, raw_column, raw, info) -> Detection:
    """The combined detection; a sample in no group gets the lowest score of those in one."""
    scored = count > 0
    scores = scores.copy()
    scores[~scored] = scores[scored].min() if scored.any() else 0.0
    group = np.array(list(names) + [""], dtype=object)[best].astype(str)
    return Detection(scores=scores, flagged=flagged, columns={"group": group, "groups": count, raw_column: raw},
                     info=info)


def top_directions(xc: np.ndarray, k: int, seed: int) -> np.ndarray:
    """The top ``k`` right singular vectors (k×D, float64) of the centred matrix ``xc``.

    Exact SVD when the matrix is small, a seeded randomized SVD otherwise (N up to ~100k × 1024 at paper scale).
    """
    n, dim = xc.shape
    k = max(1, min(k, n, dim))
    if min(n, dim) <= EXACT_SVD_MAX:
        _, _, vt = np.linalg.svd(np.asarray(xc, np.float64), full_matrices=False)
        return vt[:k]
    _, _, vt = randomized_svd(xc, k, n_oversamples=max(10, k), n_iter=7 if k == 1 else 4, random_state=seed)
    return np.asarray(vt, np.float64)


def robust_scale(values: np.ndarray, fallback: np.ndarray | None = None) -> float:
    """1.4826·MAD of ``values`` (the SD for normal data); the SD, or that of ``fallback``, when it is zero."""
    values = np.asarray(values, np.float64)
    for scale in (MAD_TO_SD * np.median(np.abs(values - np.median(values))), values.std(),
                  np.std(fallback) if fallback is not None and len(fallback) else 0.0):
        if scale > 1e-12:
            return float(scale)
    return 1.0


def loo_medians(values: np.ndarray) -> np.ndarray:
    """For each ``i``, the median of ``values`` without ``values[i]`` (exact; one sort, at least two values).

    Removing the element at sorted position ``r`` leaves the sorted sequence ``t[k] = s[k + (k ≥ r)]``, whose
    median is its middle element (or the mean of its two middle elements)."""
    v = np.asarray(values, np.float64)
    n = len(v)
    if n < 2:
        raise ValueError(f"a leave-one-out median needs at least two values, got {n}")
    order = np.argsort(v, kind="stable")
    s = v[order]
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    lo, hi = (n - 2) // 2, (n - 1) // 2  # the middle positions of the n − 1 values left
    return (s[lo + (lo >= rank)] + s[hi + (hi >= rank)]) / 2


def jackknife_z(values: np.ndarray, fallback: np.ndarray | None = None) -> np.ndarray:
    """Leave-one-out robust z: ``|v_i − median(v_−i)| / robust_scale(v_−i, fallback)``, ``v_−i`` the values
    other than ``v_i`` (``robust_scale``: 1.4826·MAD, or its fallbacks when that is zero).

    A holdout sample standardised by a median and MAD that include it sits nearer the centre than a new sample
    does (most of all in a small reference set); left out, it is scored as a training sample is, by a reference
    it is not part of, so a quantile of these z is a threshold for the training samples' z.
    """
    v = np.asarray(values, np.float64)
    centre = loo_medians(v)
    mad = np.empty(len(v))
    for c in np.unique(centre):  # at most three distinct leave-one-out medians
        rows = centre == c
        mad[rows] = loo_medians(np.abs(v - c))[rows]
    scale = MAD_TO_SD * mad
    for i in np.flatnonzero(scale <= 1e-12):
        scale[i] = robust_scale(np.delete(v, i), fallback)
    return np.abs(v - centre) / scale


def crossfit(n: int, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(fit rows, scored rows) pairs: each of ``folds`` random parts is scored by what was fit on the others.

    With one fold (or a group too small to split into parts of at least 5) every row is fit and scored in-sample.
    Cross-fitting makes a clean training sample and a holdout sample alike to the fitted direction(s), so a
    threshold calibrated on the holdout means the same for the training group.
    """
    rows = np.arange(n)
    if folds < 2 or n < 5 * folds:
        return [(rows, rows)]
    parts = np.array_split(np.random.default_rng(seed).permutation(n), folds)
    return [(np.sort(np.concatenate(parts[:i] + parts[i + 1 :])), np.sort(part)) for i, part in enumerate(parts)]


def cut_count(eps: float, n: int) -> int:
    """How many of a group of ``n`` the faithful rules remove: round(1.5·eps·n), at least 1, at most n."""
    return int(min(n, max(1, round(1.5 * eps * n))))


def top_cut(raw: np.ndarray, count: int) -> tuple[np.ndarray, float]:
    """Flags on the ``count`` largest values (stable order), and the value of the last one flagged."""
    order = np.argsort(-raw, kind="stable")
    flags = np.zeros(len(raw), bool)
    flags[order[:count]] = True
    return flags, float(raw[order[count - 1]])


def scaled(raw: np.ndarray, cut: float) -> np.ndarray:
    """``raw`` in units of the group's cut (a non-positive cut leaves it as is)."""
    return raw / cut if cut > 1e-12 else raw.copy()


def _check_int(label: str, key: str, value, lo: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < lo:
        raise UserError(f"{label} {key} must be an integer ≥ {lo}, got {value!r}")


def _check_number(label: str, key: str, value, lo: float, hi: float, lo_open: bool = True,
                  hi_open: bool = True) -> None:
    ok = isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)
    if ok:
        value_f = float(value)
        ok = np.isfinite(value_f) and (value_f > lo if lo_open else value_f >= lo) and \
            (value_f < hi if hi_open else value_f <= hi)
    if not ok:
        interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        raise UserError(f"{label} {key} must be a number in {interval}, got {value!r}")


# --- the defense -----------------------------------------------------------------------------------------------------

@DEFENSES.register("spectral")
class SpectralSignatures(FindingGroupDefense):
    """Spectral Signatures (Tran, Li & Madry, "Spectral Signatures in Backdoor Attacks", NeurIPS 2018).

    Changed for multi-label: one-vs-rest finding groups instead of softmax classes (a sample may be scored in
    several groups; max of standardised scores; union of flags); and a default ``holdout`` flag rule that measures
    the top-direction projections against the clean holdout's (median/MAD, threshold calibrated on the holdout)
    instead of removing the group's largest ``1.5·ε·n`` — which assumes the poison is a minority of its group.
    See the module docstring.

    The floor (``min_z``, holdout rule): the flag threshold is ``max(min_z, calibrated)``, the calibrated
    threshold being the conformal one of the holdout maxima (``calibration: sample``) or each group's holdout
    quantile (``calibration: group``). The calibrated threshold rests on the clean holdout alone, under the group
    rule on a group's few holdout samples; a holdout that happens to be tight along the direction (or ties in its
    projections, which shrink the MAD) puts it at a z that ordinary clean variation exceeds. The floor keeps a
    sample from being flagged less than ``min_z`` robust standard deviations from the clean centre, the usual
    outlier cut. It only ever raises the threshold: where it binds, fewer clean samples are flagged than ``fpr``
    allows (and fewer poisoned ones), and the rate is no longer the calibrated one. ``info`` says how often:
    ``floor``, ``floor_binds`` (how many of the compared thresholds the floor replaced) and ``floor_groups`` (how
    many were compared: the one threshold under ``calibration: sample``, one per group and fold under ``group``).

    Args:
        rule: ``holdout`` (default) or ``faithful`` (the paper's top-1.5·ε·n removal per group).
        eps: faithful rule: the assumed upper bound on the poisoned fraction of a group, in (0, 2/3); 1.5·eps of
            every group is removed (default 0.05, one of the paper's settings, i.e. 7.5%).
        projection: faithful rule: ``centred`` (the paper's text: the squared projection of the centred
            representation, ``((x − mean)·v)²``) or ``uncentred`` (the authors' released code and IBM ART's port
            of it: ``|x·v|`` of the raw representation, ``v`` still from the centred matrix). The two rank a group
            differently whenever its mean has a component along ``v``.
        fpr: holdout rule: the threshold is at least the holdout's own (1 − fpr) quantile of z (default 0.01).
        min_z: holdout rule: the floor under the calibrated threshold, a robust z (default 3; 0 for none): the
            flag threshold is ``max(min_z, calibrated)``, see "The floor" above.
        calibration: holdout rule: ``sample`` (the default: one conformal threshold at ``fpr`` per training
            sample, on the max of each holdout sample's groups: :func:`combine_per_sample`) or ``group`` (each
            group's threshold from its own holdout samples, at ``fpr`` per group).
        folds: holdout rule: cross-fitting folds (default 2: the direction that scores a half of the group is fit
            on the other half; 1 = in-sample, as the paper).
        min_group: groups with fewer training samples are skipped (default 10).
        min_holdout: holdout rule: fewer holdout samples of the finding → ``fallback`` (default 5).
        fallback: holdout rule, small holdout group: ``all`` (whole holdout as reference) or ``skip``.
        centre: holdout rule: where a training sample's distance is measured from: ``holdout`` (the holdout's
            median projection) or ``anchored`` (the mode of the training projections nearest it: see
            :func:`anchored_centre`; the holdout still sets the scale and the threshold).
        window: ``centre: anchored``: the half-width of the mode search, in holdout robust SDs.
    """

    paper = "Tran, Li & Madry, Spectral Signatures in Backdoor Attacks, NeurIPS 2018"
    changes = ("one-vs-rest finding groups, a sample scored by the max over its groups; default rule measures "
               "top-direction projections against the clean holdout (median/MAD) and flags above one conformal "
               "threshold per sample, set on the holdout samples' max over their own groups (per-group "
               "thresholds: calibration group), instead of removing each group's top 1.5·eps·n, which assumes a "
               "poisoned minority")
    label = "spectral"
    raw_column = "z"
    revision = 2
    stream = 1000

    def __init__(self, rule: str = "holdout", eps: float = 0.05, fpr: float = 0.01, min_z: float = 3.0,
                 folds: int = 2, min_group: int = 10, min_holdout: int = 5, fallback: str = "all",
                 centre: str = "holdout", window: float = 2.0, calibration: str = "sample",
                 projection: str = "centred") -> None:
        self._check_common(rule, min_group, min_holdout, fallback)
        self._check_calibration(calibration)
        if projection not in PROJECTIONS:
            raise UserError(f"spectral projection must be centred or uncentred, got {projection!r}")
        self.projection = projection
        if centre not in CENTRES:
            raise UserError(f"spectral centre must be holdout or anchored, got {centre!r}")
        _check_number(self.label, "window", window, 0.0, np.inf)
        self.centre, self.window = centre, float(window)
        _check_int(self.label, "folds", folds, 1)
        self.folds = folds
        _check_number(self.label, "eps", eps, 0.0, 2.0 / 3.0)
        _check_number(self.label, "fpr", fpr, 0.0, 1.0)
        _check_number(self.label, "min_z", min_z, 0.0, np.inf, lo_open=False)
        self.eps, self.fpr, self.min_z = float(eps), float(fpr), float(min_z)

    def score_group(self, d: Defender, group: Group, x: np.ndarray, h: np.ndarray | None,
                    seed: int) -> GroupResult:
        if self.rule == "faithful":
            mean = x.mean(0, dtype=np.float64)
            xc = x - mean.astype(x.dtype)
            v = top_directions(xc, 1, seed)[0]
            if self.projection == "uncentred":  # the authors' released code: |x·v| of the raw representation
                p = x @ v
                z = np.abs(p) / (p.std() if p.std() > 1e-12 else 1.0)
            else:  # the paper's text: ((x − mean)·v)²
                p = xc @ v
                z = np.abs(p - p.mean()) / (p.std() if p.std() > 1e-12 else 1.0)
            flags, cut = top_cut(z, cut_count(self.eps, len(z)))
            return GroupResult(scaled(z, cut), flags, z, {"cut_z": cut})
        z, threshold = np.zeros(len(x)), np.ones(len(x))
        thresholds, calibrated, shares, centres, zh_folds = [], [], [], [], []
        for fit, part in crossfit(len(x), self.folds, seed):
            mean = x[fit].mean(0, dtype=np.float64).astype(x.dtype)
            v = top_directions(x[fit] - mean, 1, seed)[0]
            p, ph = (x[part] - mean) @ v, (h - mean) @ v
            centre, scale = float(np.median(ph)), robust_scale(ph, p)
            zh = jackknife_z(ph, p)
            zh_folds.append(zh)
            at = centre
            if self.centre == "anchored":
                at = anchored_centre((x[fit] - mean) @ v, centre, self.window * scale)
                centres.append(at - centre)
            z[part] = np.abs(p - at) / scale
            calibrated.append(float(np.quantile(zh, 1.0 - self.fpr)))
            threshold[part] = max(self.min_z, calibrated[-1])
            thresholds.append(float(threshold[part][0]))
            shares.append(float(np.mean(zh > threshold[part][0])))
        info = {"threshold_z": thresholds, "calibrated_z": calibrated, "holdout_flagged_share": shares}
        if centres:
            info["centre_shift"] = centres  # anchored centre − holdout median, per fold, in projection units
        members = holdout_members(d, group)
        return GroupResult(z / threshold, z > threshold, z, info, group.holdout[members],
                           one_fold_each(zh_folds, members), calibrated)

    @property
    def floor(self) -> float:
        return self.min_z


def anchored_centre(projections: np.ndarray, start: float, window: float, steps: int = 100) -> float:
    """The mode of the training ``projections`` nearest the holdout's median ``start``: repeatedly the median of
    the projections within ``window`` of the current centre, until it stops moving (``start`` if none is near).

    A model has memorised its training samples and not the holdout, so its clean training samples sit off the
    holdout's centre along the group's top direction (planted-feature fixture: the clean training set flagged at
    5–7% against the holdout's centre at a nominal 1%); a poisoned cluster far from the holdout is a separate mode
    and is not reached, whatever its share of the group. A weak trigger, whose cluster merges with the clean one,
    pulls the centre part of the way towards it.
    """
    centre = float(start)
    for _ in range(steps):
        near = np.abs(projections - centre) < window
        if not near.any():
            break
        new = float(np.median(projections[near]))
        if abs(new - centre) <= 1e-9 * max(window, 1e-12):
            break
        centre = new
    return centre
