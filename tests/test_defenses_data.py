"""Data defenses spectral, activation-clustering and spectre on hand-built features with a known answer.

No model is trained: the Defender's cached features are filled with planted data (an anisotropic Gaussian per sample
plus a mean per positive finding; poisoned samples are clean draws moved far along one random direction, "the
trigger", and relabelled). The clean training features are not drawn like the holdout's: a trained model has
memorised its training samples, so theirs are tighter and more confident (``MEMORISED``), as on real pixels, where a
clean control's training samples were flagged at 10–17% for a nominal 1%. The stub model and images raise if a
defense touches them.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.linalg import cholesky, expm, solve_triangular
from sklearn.covariance import ledoit_wolf
from sklearn.metrics import roc_auc_score
from threadpoolctl import threadpool_limits
from torch import nn

import medbackdoor.defenses.activation_clustering  # noqa: F401 - registers
import medbackdoor.defenses.spectral  # noqa: F401 - registers
import medbackdoor.defenses.spectre  # noqa: F401 - registers
from medbackdoor.defenses.base import DEFENSES, DataDefense, Defender, Images
from medbackdoor.defenses.spectral import crossfit, cut_count, top_directions
from medbackdoor.errors import UserError

METHODS = ("spectral", "activation-clustering", "spectre")
RULES = ("holdout", "faithful")
NAMES = ["A", "B", "C", "D"]
PREVALENCE = np.array([0.3, 0.25, 0.2, 0.005])  # D is too rare to make a group (min_group 10)


MEMORISED = (0.8, 2.0)  # a trained model's clean training features: noise × 0.8, finding means × 2 (see make_case)


class NoModel(nn.Module):
    def forward(self, x):
        raise AssertionError("a data defense called the model although the features were cached")


class NoPixels(np.ndarray):
    def __getitem__(self, sel):
        raise AssertionError("a data defense read images although the features were cached")


def no_images(n: int) -> Images:
    return Images(np.zeros((n, 1, 1), np.uint8).view(NoPixels))


def make_case(n_train=900, n_hold=400, dim=48, poison=0, poison_labels=(0,), shift=15.0, seed=0, d_seed=0,
              holdout_features=True, memorised=MEMORISED):
    """A Defender on planted features and the truth (poisoned mask). Group A ≈ 270 clean training samples.

    ``memorised = (tight, confident)``: a trained model has seen its training samples and not the holdout, so its
    features of clean training samples are tighter around their findings' means (noise × ``tight``) and further
    along them, more confident (means × ``confident``) than those of the holdout; (1, 1) draws both alike.
    Poisoned samples are memorised clean draws moved along the trigger direction.
    """
    rng = np.random.default_rng(seed)
    scales = np.linspace(2.0, 0.5, dim)
    means = rng.normal(0, 0.5, (len(NAMES), dim))
    trigger = rng.normal(size=dim)
    trigger /= np.linalg.norm(trigger)
    tight, confident = memorised

    def clean(n, spread=1.0, pull=1.0):
        y = (rng.random((n, len(NAMES))) < PREVALENCE).astype(np.float32)
        return (rng.normal(size=(n, dim)) * scales * spread + pull * (y @ means)).astype(np.float32), y

    xt, yt = clean(n_train, tight, confident)
    xh, yh = clean(n_hold)
    xp, _ = clean(poison, tight, confident)
    xp += shift * trigger
    yp = np.zeros((poison, len(NAMES)), np.float32)
    yp[:, list(poison_labels)] = 1
    x, y = np.concatenate([xt, xp]), np.concatenate([yt, yp])
    d = Defender(NoModel(), no_images(len(x)), y, no_images(n_hold), yh, NAMES, seed=d_seed)
    d._cache["train_features"] = x
    if holdout_features:
        d._cache["holdout_features"] = xh
    return d, np.r_[np.zeros(n_train, bool), np.ones(poison, bool)]


def issue18(measured: str):
    """The holdout rules' defect the memorised fixture shows (issue 18, "flags that keep their rate"): clean training
    samples sit further out than the clean holdout the threshold was set on, so more of them are flagged."""
    return pytest.mark.xfail(strict=True, reason=f"issue 18: on memorised clean training samples {measured}")


def run(method, d, **options):
    det = DEFENSES.create_checked(method, options).suspicion(d)
    n = len(d.train_labels)
    assert det.scores.shape == (n,) and det.flagged.shape == (n,) and det.flagged.dtype == bool
    assert np.isfinite(det.scores).all()
    assert all(len(v) == n for v in det.columns.values())
    json.dumps(det.info)  # JSON-serialisable as it is
    return det


def stats(det, truth, members=None):
    keep = np.ones(len(truth), bool) if members is None else members
    y, s, f = truth[keep], det.scores[keep], det.flagged[keep]
    return {"auroc": roc_auc_score(y, s), "recall": (f & y).sum() / y.sum(),
            "precision": (f & y).sum() / max(f.sum(), 1), "fpr": (f & ~y).sum() / (~y).sum()}


# --- the definitions, written out (the expected values of the tests below) -------------------------------------------

def group_rows(d, finding, min_holdout=5):
    """Training and holdout rows of a finding's group (the holdout rows: the samples with the finding)."""
    train = np.flatnonzero(d.train_labels[:, finding] > 0.5)
    hold = np.flatnonzero(d.holdout_labels[:, finding] > 0.5)
    assert len(hold) >= min_holdout  # the group's own reference, no fallback
    return train, hold


def top_projection(x, others):
    """Centre on the training group's mean; project it and ``others`` on its top right singular vector(s)."""
    x = np.asarray(x, np.float64)
    mean = x.mean(0)
    vt = np.linalg.svd(x - mean, full_matrices=False)[2]
    return mean, vt, [(np.asarray(o, np.float64) - mean) for o in others]


def spectral_z(x, h):
    """In-sample spectral z (folds 1) of the training group ``x`` and, leave-one-out, of the holdout group ``h``:
    p = (x − mean)·v, v the top right singular vector; z = |p − median(p_h)| / (1.4826·MAD(p_h)); a holdout sample's
    median and MAD are those of the other holdout samples."""
    mean, vt, (xc, hc) = top_projection(x, (x, h))
    p, ph = xc @ vt[0], hc @ vt[0]
    mad = 1.4826 * np.median(np.abs(ph - np.median(ph)))
    zh = []
    for j in range(len(ph)):
        rest = np.delete(ph, j)
        zh.append(abs(ph[j] - np.median(rest)) / (1.4826 * np.median(np.abs(rest - np.median(rest)))))
    return np.abs(p - np.median(ph)) / mad, np.array(zh), np.abs(ph - np.median(ph)) / mad


def mahalanobis_sq(q, mu, cov):
    """(q − μ)ᵀ Σ⁻¹ (q − μ) per row, through the Cholesky factor Σ = L Lᵀ."""
    r = solve_triangular(cholesky(cov, lower=True), (q - mu).T, lower=True).T
    return (r ** 2).sum(1)


def spectre_tau(z, reference, alpha=4.0, keep=0.9):
    """SPECTRE's holdout rule from its definition, as a function of the points to score: start from the mean and
    Ledoit–Wolf covariance of ``reference``; three times keep the training points ``z`` within the reference's
    ``keep`` quantile of Mahalanobis distance and re-estimate from them (unless fewer than max(2k, 10) are kept);
    whiten with any square root of Σ⁻¹ (here Cholesky), Σ̃ = mean of the whitened training points' r rᵀ,
    Q = expm(α(Σ̃ − I)/(‖Σ̃‖₂ − 1)), τ = rᵀQr / tr(Q)."""
    k = z.shape[1]

    def estimate(points):
        mu = points.mean(0)
        return mu, ledoit_wolf(points - mu, assume_centered=True)[0]

    mu, cov = estimate(reference)
    for _ in range(3):
        kept = mahalanobis_sq(z, mu, cov) <= np.quantile(mahalanobis_sq(reference, mu, cov), keep)
        if kept.sum() < max(2 * k, 10):
            break
        mu, cov = estimate(z[kept])
    inv_l = np.linalg.inv(cholesky(cov, lower=True))
    r = (z - mu) @ inv_l.T
    second = r.T @ r / len(r)
    top = np.linalg.eigvalsh(second).max()
    q = expm(alpha * (second - np.eye(k)) / (top - 1.0)) if top > 1.0 + 1e-9 else np.eye(k)

    def tau(points):
        w = (points - mu) @ inv_l.T
        return np.einsum("ij,jk,ik->i", w, q, w) / np.trace(q)

    return tau


def spectre_scores(x, h, dims=32, blocks=20):
    """SPECTRE's holdout rule, in-sample (folds 1): the training group's τ under the estimate anchored on the whole
    holdout group, and each holdout sample's τ under the estimate anchored on the holdout samples outside its block
    (contiguous blocks, at most ``blocks`` of them: one sample each for a small group). Also the holdout's τ under
    the estimate anchored on all of it (in-sample)."""
    k = min(dims, (len(x) - 1) // 2, x.shape[1])
    mean, vt, (xc, hc) = top_projection(x, (x, h))
    z, zh = xc @ vt[:k].T, hc @ vt[:k].T
    tau_h = np.empty(len(zh))
    for block in np.array_split(np.arange(len(zh)), min(len(zh), blocks)):
        tau_h[block] = spectre_tau(z, np.delete(zh, block, axis=0))(zh[block])
    whole = spectre_tau(z, zh)
    return whole(z), tau_h, whole(zh)


def conformal_threshold(clean, fpr):
    """The (m+1)-th largest clean score, m = ⌊(n+1)·fpr⌋ − 1."""
    m = int(np.floor((len(clean) + 1) * fpr + 1e-9)) - 1
    return np.sort(clean)[::-1][m]


# --- registration and options ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", METHODS)
def test_registered_with_paper_and_changes(method):
    defense = DEFENSES.create_checked(method, {})
    assert isinstance(defense, DataDefense) and defense.kind == "data"
    assert defense.paper and defense.changes
    assert defense.options()["rule"] == "holdout"  # the default does not assume a poisoned minority
    json.dumps(defense.options())


@pytest.mark.parametrize("method, options", [
    *[(m, o) for m in METHODS for o in (
        {"rule": "majority"}, {"rule": 3}, {"min_group": 2}, {"min_group": 10.5}, {"min_holdout": 1},
        {"fallback": "whole"}, {"nonsense": 1})],
    ("spectral", {"eps": 0.0}), ("spectral", {"eps": 0.7}), ("spectral", {"fpr": 1.0}), ("spectral", {"min_z": -1}),
    ("spectral", {"folds": 0}), ("spectral", {"eps": True}), ("spectral", {"centre": "training"}),
    ("spectral", {"window": 0}),
    ("activation-clustering", {"dims": 0}), ("activation-clustering", {"size": 0.6}),
    ("activation-clustering", {"silhouette": 1.5}), ("activation-clustering", {"excess": 1.0}),
    ("activation-clustering", {"significance": 0}), ("activation-clustering", {"whiten": "yes"}),
    ("spectre", {"dims": 0}), ("spectre", {"alpha": 0}), ("spectre", {"eps": 1.0}), ("spectre", {"keep": 0}),
    ("spectre", {"keep": 1.5}), ("spectre", {"fpr": -0.1}), ("spectre", {"min_que": -1}), ("spectre", {"folds": 0}),
    ("spectral", {"calibration": "pooled"}), ("spectre", {"calibration": "split"}),
])
def test_bad_options_are_one_line_user_errors(method, options):
    with pytest.raises(UserError) as err:
        DEFENSES.create_checked(method, options)
    assert "\n" not in str(err.value) and str(err.value)


def test_direct_construction_validates_too():
    from medbackdoor.defenses.activation_clustering import ActivationClustering
    from medbackdoor.defenses.spectral import SpectralSignatures
    from medbackdoor.defenses.spectre import Spectre

    for cls in (SpectralSignatures, ActivationClustering, Spectre):
        with pytest.raises(UserError, match="rule"):
            cls(rule="Holdout")
        with pytest.raises(UserError, match="min_group"):
            cls(min_group=True)


# --- known answers ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("method", METHODS)
def test_minority_cluster_is_caught_by_both_rules(method, rule):
    d, truth = make_case(poison=20)  # 20 of ≈290 in group A (7%)
    det = run(method, d, rule=rule)
    s = stats(det, truth)
    assert s["auroc"] > 0.95
    assert s["recall"] >= 0.9
    assert set(det.columns["group"][truth]) == {"A"}


@pytest.mark.parametrize("method", [
    pytest.param("spectral", marks=issue18("7.3% of clean training samples are flagged (nominal 1%), precision 0.23")),
    pytest.param("activation-clustering", marks=issue18("5.7% of clean training samples are flagged, precision 0.28")),
    pytest.param("spectre", marks=issue18("1.7% of clean training samples are flagged, precision 0.57")),
])
def test_minority_cluster_holdout_rule_keeps_its_false_positive_rate(method):
    d, truth = make_case(poison=20)
    s = stats(run(method, d), truth)
    assert s["precision"] >= 0.7 and s["fpr"] <= 0.02


@pytest.mark.parametrize("method, options", [(m, {}) for m in METHODS] + [("activation-clustering", {"whiten": True})])
def test_majority_cluster_holdout_rule_catches_it(method, options):
    d, truth = make_case(poison=500)  # 500 of ≈770 in group A (65%), like the project's one-hot Atelectasis attack
    det = run(method, d, **options)
    s = stats(det, truth)
    assert s["auroc"] > 0.95
    assert s["recall"] >= 0.95
    assert stats(det, truth, d.train_labels[:, 0] > 0.5)["auroc"] > 0.95  # within the group too


@pytest.mark.parametrize("method, options", [
    pytest.param("spectral", {}, marks=issue18("7.3% of them are flagged, precision 0.88")),
    pytest.param("activation-clustering", {}, marks=issue18("5.7% of them are flagged, precision 0.91")),
    ("spectre", {}), ("activation-clustering", {"whiten": True}),
])
def test_majority_cluster_holdout_rule_is_precise(method, options):
    d, truth = make_case(poison=500)
    assert stats(run(method, d, **options), truth)["precision"] >= 0.95


@pytest.mark.parametrize("method", METHODS)
def test_majority_cluster_faithful_rule_fails_as_documented(method):
    """A result, not a bug: the papers' rules assume the poison is a minority of its class."""
    d, truth = make_case(poison=500)
    det = run(method, d, rule="faithful")
    group = stats(det, truth, d.train_labels[:, 0] > 0.5)
    assert group["auroc"] < 0.6 and group["recall"] < 0.2
    if method in ("spectral", "activation-clustering"):
        # the ranking is inverted: the clean minority sits far from the (poisoned) group mean / is the smaller cluster
        assert group["auroc"] < 0.1 and group["precision"] < 0.1


@issue18("SPECTRE's AUROC is 0.887: memorised clean samples score high against the holdout's estimate too")
def test_poison_off_the_top_direction_needs_whitening():
    """SPECTRE's point: a trigger that is not the group's top-variance direction escapes the spectral signature."""
    d, truth = make_case(poison=60, shift=6.0)
    rng = np.random.default_rng(100)
    big = rng.normal(size=48).astype(np.float32)
    big /= np.linalg.norm(big)
    for key in ("train_features", "holdout_features"):  # a dominant clean factor (sd 8) beside the trigger (6)
        d._cache[key] += 8 * rng.normal(size=(len(d._cache[key]), 1)).astype(np.float32) * big
    assert stats(run("spectral", d), truth)["auroc"] < 0.85
    s = stats(run("spectre", d), truth)
    assert s["auroc"] > 0.9 and s["precision"] >= 0.8


@pytest.mark.parametrize("method", [
    pytest.param("spectral", marks=issue18("5.1% are flagged (nominal 1%)")),
    pytest.param("activation-clustering", marks=issue18("5.7% are flagged")),
    "spectre",
])
def test_clean_training_set_holdout_rule_flags_few(method):
    d, truth = make_case(poison=0)
    det = run(method, d)
    assert det.flagged.mean() <= 0.03
    for g in det.info["groups"]:
        assert g["reference"] == "group"


FLOORLESS = {"spectral": {"min_z": 0.0}, "spectre": {"min_que": 0.0}}


@pytest.mark.parametrize("method", ["spectral", "spectre"])
def test_sample_calibration_is_one_conformal_threshold(method):
    """``calibration: sample`` recomputed from the definitions (folds 1; :func:`spectral_z`, :func:`spectre_scores`):
    every training and holdout sample gets the max raw score over the groups of its own findings (a holdout sample
    scored out-of-sample, as a training sample is; −inf in no group), the threshold is the (m+1)-th largest holdout
    max, m = ⌊(n+1)·fpr⌋ − 1, and a training sample is flagged exactly when its max is above it."""
    d, truth = make_case(poison=20, memorised=(1.0, 1.0))
    det = run(method, d, calibration="sample", fpr=0.02, folds=1, **FLOORLESS[method])
    x_all, h_all = np.asarray(d.train_features), np.asarray(d.holdout_features)
    train, hold = np.full(len(truth), -np.inf), np.full(len(d.holdout_labels), -np.inf)
    for finding in range(3):  # A, B, C: D has fewer than min_group = 10 training samples
        rows, hold_rows = group_rows(d, finding)
        raw, raw_h, _ = (spectral_z if method == "spectral" else spectre_scores)(x_all[rows], h_all[hold_rows])
        train[rows] = np.maximum(train[rows], raw)
        hold[hold_rows] = np.maximum(hold[hold_rows], raw_h)
    assert (d.train_labels[:, 3] > 0.5).sum() < 10 and [s["finding"] for s in det.info["skipped"]] == ["D"]
    t = conformal_threshold(hold, 0.02)
    assert det.info["threshold"] == pytest.approx(t, rel=1e-6) and det.info["calibration"] == "sample"
    np.testing.assert_array_equal(det.flagged, train > t)
    m = int(np.floor((len(hold) + 1) * 0.02)) - 1
    assert det.info["holdout_above"] == (hold > t).sum() <= m
    assert stats(det, truth)["recall"] == 1.0


@pytest.mark.parametrize("n_hold", [120, 400])
@pytest.mark.parametrize("method", ["spectral", "spectre"])
def test_sample_calibration_keeps_the_rate_on_exchangeable_features(method, n_hold):
    """Clean training and holdout features drawn alike (no memorisation), no floor: the per-sample rule flags
    about ``fpr`` of the clean training samples over four seeds (spectral 0.8% and 0.7%, with 120 and 400 holdout
    samples; spectre 1.0% and 0.7%), both with the holdout's own scores jackknifed."""
    rates = []
    for seed in range(4):
        d, truth = make_case(poison=20, seed=seed, n_hold=n_hold, memorised=(1.0, 1.0))
        det = run(method, d, calibration="sample", **FLOORLESS[method])
        rates.append(det.flagged[~truth].mean())
        assert det.flagged[truth].all()
    assert np.mean(rates) <= 0.015


@pytest.mark.parametrize("calibration", ["sample", "group"])
@pytest.mark.parametrize("n_hold", [120, 400])
@pytest.mark.parametrize("method", ["spectral", "spectre"])
def test_the_rate_with_the_floor_on(method, n_hold, calibration):
    """The same exchangeable features with the floors at their defaults (spectral ``min_z`` 3, spectre ``min_que``
    9). A floor only raises the threshold: where it binds in every group and fold of every seed the clean training
    samples are flagged at most at the nominal 1%; otherwise within the tolerance of the floorless test (1.5%),
    the group rule included (it overshoots without the floor, see ``calibration`` in the spectral docstring).
    How often it binds is in ``info``: one threshold under the sample rule, one per group (A, B, C) and fold (2)
    under the group rule."""
    rates, binds, compared = [], [], []
    for seed in range(4):
        d, truth = make_case(poison=20, seed=seed, n_hold=n_hold, memorised=(1.0, 1.0))
        det = run(method, d, calibration=calibration)
        rates.append(det.flagged[~truth].mean())
        binds.append(det.info["floor_binds"])
        compared.append(det.info["floor_groups"])
        assert det.flagged[truth].all()
    assert compared == [1 if calibration == "sample" else 6] * 4
    assert all(0 <= b <= c for b, c in zip(binds, compared))
    assert np.mean(rates) <= (0.01 if binds == compared else 0.015), (rates, binds)


@pytest.mark.parametrize("method, key", [("spectral", "min_z"), ("spectre", "min_que")])
def test_floor_binds_counts_the_thresholds_the_floor_replaced(method, key):
    """Floors set by hand around the calibrated thresholds of a floorless run: under the sample rule the one
    threshold is the floor exactly when the floor is larger; under the group rule the floor binds in the groups
    and folds whose calibrated threshold is below it (a floor at the median of the six binds in three)."""
    d, _ = make_case(poison=20, memorised=(1.0, 1.0))
    t0 = run(method, d, **{key: 0.0}).info["threshold"]
    for floor, binds in ((0.0, 0), (t0 / 2, 0), (t0 * 2, 1)):
        info = run(method, d, **{key: floor}).info
        assert info["threshold"] == max(floor, t0) and info["floor"] == floor
        assert (info["floor_binds"], info["floor_groups"]) == (binds, 1)
    groups = run(method, d, calibration="group", **{key: 0.0}).info["groups"]
    calibrated = [t for g in groups for t in (g["threshold_z"] if method == "spectral" else
                                              [f["threshold_que"] for f in g["folds"]])]
    assert len(calibrated) == 6 and len(set(calibrated)) == 6
    for floor, binds in ((0.0, 0), (float(np.median(calibrated)), 3), (max(calibrated) + 1.0, 6)):
        info = run(method, d, calibration="group", **{key: floor}).info
        assert (info["floor_binds"], info["floor_groups"]) == (binds, 6)


@pytest.mark.parametrize("poison, shift", [(20, 15.0), (500, 15.0), (60, 6.0), (500, 6.0)])
def test_anchored_centre_flags_fewer_memorised_clean_samples(poison, shift):
    """``centre: anchored`` measures from the training mode nearest the holdout's centre: on memorised clean
    training features it flags fewer clean samples than the holdout's own centre, and finds as many poisoned ones."""
    d, truth = make_case(poison=poison, shift=shift)
    base = stats(run("spectral", d), truth)
    anchored = stats(run("spectral", d, centre="anchored"), truth)
    assert anchored["fpr"] < base["fpr"]
    assert anchored["recall"] >= base["recall"]
    assert anchored["auroc"] >= base["auroc"] - 1e-9


def test_anchored_centre_is_the_nearest_mode():
    from medbackdoor.defenses.spectral import anchored_centre

    rng = np.random.default_rng(0)
    clean, poison = rng.normal(1.5, 1.0, 300), rng.normal(12.0, 1.0, 700)  # a poisoned majority, far away
    both = np.r_[clean, poison]
    assert abs(anchored_centre(both, 0.0, 2.0) - 1.5) < 0.3  # from the holdout's centre (0) to the clean mode
    assert abs(anchored_centre(both, 11.0, 2.0) - 12.0) < 0.3
    assert anchored_centre(both, -50.0, 2.0) == -50.0  # nothing near: the start


def test_faithful_spectral_removes_one_and_a_half_eps_per_group():
    d, _ = make_case(poison=0)
    det = run("spectral", d, rule="faithful", eps=0.1)
    assert [g["finding"] for g in det.info["groups"]] == ["A", "B", "C"]
    for g in det.info["groups"]:
        assert g["flagged"] == cut_count(0.1, g["train"]) == round(0.15 * g["train"])
    assert det.info["skipped"][0]["finding"] == "D"


@pytest.mark.parametrize("method", METHODS)
def test_multilabel_membership_max_and_union(method):
    d, truth = make_case(poison=20, poison_labels=(0, 1))  # poisoned samples are in groups A and B
    per_group_rule = {} if method == "activation-clustering" else {"calibration": "group"}  # sample: see below
    defense = DEFENSES.create_checked(method, per_group_rule)
    det = defense.suspicion(d)
    assert (det.columns["groups"][truth] == 2).all()
    assert set(det.columns["group"][truth]) <= {"A", "B"}
    s = stats(det, truth)
    assert s["auroc"] > 0.95 and s["recall"] >= 0.9

    # the combined score is the max over a sample's groups; flags are the union
    results, skipped = defense.group_results(d)
    n = len(truth)
    per_group = np.full((len(results), n), -np.inf)
    union = np.zeros(n, bool)
    for j, (g, r) in enumerate(results):
        per_group[j, g.train] = r.scores
        union[g.train] |= r.flagged
    scored = np.isfinite(per_group).any(0)
    np.testing.assert_allclose(det.scores[scored], per_group.max(0)[scored])
    np.testing.assert_array_equal(det.flagged, union)
    best = np.array([NAMES[results[j][0].finding] for j in per_group.argmax(0)])
    assert (det.columns["group"][scored] == best[scored]).all()

    # samples in no scored group (no finding, or only the too-rare D) get the minimum score and no flag
    assert (~scored).sum() > 100 and [s["finding"] for s in skipped] == ["D"]
    assert (det.scores[~scored] == det.scores.min()).all()
    assert not det.flagged[~scored].any() and (det.columns["group"][~scored] == "").all()
    assert (det.columns["groups"][~scored] == 0).all()


@pytest.mark.parametrize("method", METHODS)
def test_small_holdout_group_falls_back_or_is_skipped(method):
    d, truth = make_case(poison=20)
    d.holdout_labels[3:, 0] = 0  # only a few clean holdout samples left with finding A
    assert (d.holdout_labels[:, 0] > 0.5).sum() < 5
    det = run(method, d)
    ref = {g["finding"]: g["reference"] for g in det.info["groups"]}
    assert ref == {"A": "all", "B": "group", "C": "group"}
    assert stats(det, truth)["auroc"] > 0.95  # the trigger is far from every clean sample
    det = run(method, d, fallback="skip")
    assert [g["finding"] for g in det.info["groups"]] == ["B", "C"]
    assert {s["finding"] for s in det.info["skipped"]} == {"A", "D"}


# --- determinism, and nothing but the Defender -----------------------------------------------------------------------

@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("method", METHODS)
def test_same_seed_same_output(method, rule):
    a = run(method, make_case(poison=30)[0], rule=rule)
    b = run(method, make_case(poison=30)[0], rule=rule)
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.flagged, b.flagged)
    assert json.dumps(a.info) == json.dumps(b.info)
    for key in a.columns:
        np.testing.assert_array_equal(a.columns[key], b.columns[key])


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("method", METHODS)
def test_uses_only_the_defender(method, rule):
    """The stub model and images raise if touched; the Defender's arrays are left as they were."""
    d, truth = make_case(poison=20, holdout_features=rule == "holdout")  # faithful: holdout features never needed
    before = {k: v.copy() for k, v in d._cache.items()}
    labels, hold_labels = d.train_labels.copy(), d.holdout_labels.copy()
    run(method, d, rule=rule)
    assert set(d._cache) == set(before)
    for key, value in before.items():
        np.testing.assert_array_equal(d._cache[key], value)
    np.testing.assert_array_equal(d.train_labels, labels)
    np.testing.assert_array_equal(d.holdout_labels, hold_labels)


class TinyNet(nn.Module):
    """An untrained conv net with ``forward_features``, so the Defender computes the features itself."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(1, 16, 3)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=generator))
            self.conv.bias.zero_()
        self.fc = nn.Linear(16, len(NAMES))

    def forward_features(self, x):
        return torch.relu(self.conv(x))

    def forward(self, x):
        return self.fc(self.forward_features(x).mean((2, 3)))


@pytest.mark.parametrize("method", METHODS)
def test_features_from_a_model_end_to_end(method):
    rng = np.random.default_rng(0)

    def images(n):
        return rng.integers(40, 90, (n, 12, 12), dtype=np.uint8)

    n_clean, n_poison = 160, 12
    train = images(n_clean + n_poison)
    train[n_clean:, 2:8, 2:8] = 255  # the trigger
    labels = (rng.random((n_clean + n_poison, len(NAMES))) < PREVALENCE).astype(np.float32)
    labels[:, 0] = rng.random(len(labels)) < 0.4
    labels[n_clean:] = 0
    labels[n_clean:, 0] = 1
    hold_labels = (rng.random((80, len(NAMES))) < PREVALENCE).astype(np.float32)
    hold_labels[:, 0] = rng.random(80) < 0.4
    d = Defender(TinyNet(), Images.of(train), labels, Images.of(images(80)), hold_labels, NAMES, batch_size=64)
    det = run(method, d)
    assert d.train_features.shape == (n_clean + n_poison, 16)
    truth = np.r_[np.zeros(n_clean, bool), np.ones(n_poison, bool)]
    assert stats(det, truth)["auroc"] > 0.9


# --- helpers ---------------------------------------------------------------------------------------------------------

def test_crossfit_parts_cover_the_group_once():
    pairs = crossfit(23, 2, seed=5)
    scored = np.concatenate([part for _, part in pairs])
    assert sorted(scored.tolist()) == list(range(23))
    for fit, part in pairs:
        assert not set(fit) & set(part) and len(fit) + len(part) == 23
    assert crossfit(23, 2, seed=5)[0][1].tolist() == pairs[0][1].tolist()
    fit, part = crossfit(8, 2, seed=5)[0]  # too small to split: in-sample
    assert fit.tolist() == part.tolist() == list(range(8))


def test_randomized_and_exact_top_direction_agree():
    with threadpool_limits(1, user_api="blas"):  # small matrices: threads only oversubscribe a busy machine
        _check_randomized_svd()


def _check_randomized_svd():
    rng = np.random.default_rng(1)
    direction = rng.normal(size=400)
    direction /= np.linalg.norm(direction)
    x = rng.normal(size=(600, 400)) + 6 * rng.normal(size=(600, 1)) * direction
    xc = (x - x.mean(0)).astype(np.float32)
    v = top_directions(xc, 1, seed=0)[0]  # min(600, 400) > 256: randomized SVD
    assert abs(v @ direction) > 0.95  # the sample direction (noise limits it), found by the randomized SVD
    exact = np.linalg.svd(xc.astype(np.float64), full_matrices=False)[2][0]
    assert abs(v @ exact) > 0.999



def test_spectre_scores_each_holdout_sample_out_of_sample():
    """Jackknife: a holdout sample's QUE score is taken under the estimate anchored on the other holdout samples
    (leave-one-out for a reference set of at most 20), never on itself, as a scored training sample is
    out-of-sample; recomputed from the definition (:func:`spectre_scores`)."""
    from medbackdoor.defenses.spectre import Spectre

    d, _ = make_case(poison=0, n_hold=40)
    (group, result), *_ = Spectre(folds=1).group_results(d)[0]
    rows, hold_rows = group_rows(d, 0)
    assert len(hold_rows) <= 20  # leave-one-out
    np.testing.assert_array_equal(result.holdout_rows, hold_rows)
    x, h = np.asarray(d.train_features)[rows], np.asarray(d.holdout_features)[hold_rows]
    tau, tau_h, in_sample = spectre_scores(x, h)
    np.testing.assert_allclose(result.raw, tau, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(result.holdout_raw, tau_h, rtol=1e-5, atol=1e-5)
    assert np.median(in_sample) < np.median(tau_h)  # the in-sample scores it replaces sit lower


def test_spectral_scores_each_holdout_sample_out_of_sample():
    """A holdout sample's z is measured from the median, and scaled by 1.4826·MAD, of the *other* holdout samples'
    projections (leave-one-out), as a training sample's is by holdout samples other than itself; recomputed by a
    plain loop (:func:`spectral_z`). The group's calibrated threshold is the (1 − fpr) quantile of these z. The
    in-sample z they replace (median and MAD including the sample) differ, and sit lower."""
    from medbackdoor.defenses.spectral import SpectralSignatures

    d, _ = make_case(poison=0, n_hold=40)
    results, _ = SpectralSignatures(folds=1, calibration="group", min_z=0.0).group_results(d)
    checked = 0
    for group, result in results:
        if group.reference != "group":
            continue
        rows, hold_rows = group_rows(d, group.finding)
        np.testing.assert_array_equal(result.holdout_rows, hold_rows)
        z, zh, in_sample = spectral_z(np.asarray(d.train_features)[rows], np.asarray(d.holdout_features)[hold_rows])
        np.testing.assert_allclose(result.raw, z, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(result.holdout_raw, zh, rtol=1e-5, atol=1e-5)
        assert result.info["calibrated_z"][0] == pytest.approx(np.quantile(zh, 0.99), rel=1e-5)
        assert np.abs(in_sample - zh).max() > 0.05 and np.median(in_sample) < np.median(zh)
        checked += 1
    assert checked >= 2


def test_jackknife_z_is_leave_one_out_with_the_fallback_scale():
    """Plain loop: v_−i the values other than v_i; z_i = |v_i − median(v_−i)| / (1.4826·MAD(v_−i)), the SD of v_−i
    where that MAD is 0 (here the tied ones), the fallback's SD where that is 0 too."""
    from medbackdoor.defenses.spectral import jackknife_z

    for v in (np.random.default_rng(3).normal(size=9), np.random.default_rng(4).normal(size=10),
              np.array([1.0, 1.0, 1.0, 1.0, 5.0, 9.0, 1.0])):
        expected = []
        for i in range(len(v)):
            rest = np.delete(v, i)
            scale = 1.4826 * np.median(np.abs(rest - np.median(rest)))
            expected.append(abs(v[i] - np.median(rest)) / (scale if scale > 0 else rest.std()))
        np.testing.assert_allclose(jackknife_z(v), expected, rtol=1e-12)
    # leaving out a 2: {2, 6}, median 4, MAD 2; leaving out the 6: {2, 2}, MAD and SD 0: the fallback's SD, 2
    np.testing.assert_allclose(jackknife_z(np.array([2.0, 2.0, 6.0]), np.array([0.0, 4.0])),
                               [2 / (1.4826 * 2), 2 / (1.4826 * 2), 4 / 2])
