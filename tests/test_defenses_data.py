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
from sklearn.metrics import roc_auc_score
from threadpoolctl import threadpool_limits
from torch import nn

import medbackdoor.defenses.activation_clustering  # noqa: F401 - registers
import medbackdoor.defenses.spectral  # noqa: F401 - registers
import medbackdoor.defenses.spectre  # noqa: F401 - registers
from medbackdoor.defenses.base import DEFENSES, DataDefense, Defender, Images, fpr_threshold
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
    """``calibration: sample``, recomputed from the groups' own results: every holdout sample gets the max of its
    findings' groups as a training sample does, the threshold is the conformal one of those maxima, a training
    sample is flagged exactly when its max is above it, and at most m = ⌊(n+1)·fpr⌋ − 1 holdout maxima are."""
    d, truth = make_case(poison=20, memorised=(1.0, 1.0))
    defense = DEFENSES.create_checked(method, {"calibration": "sample", "fpr": 0.02, **FLOORLESS[method]})
    det = run(method, d, calibration="sample", fpr=0.02, **FLOORLESS[method])
    results, _ = defense.group_results(d)
    train, hold = np.full(len(truth), -np.inf), np.full(len(d.holdout_labels), -np.inf)
    for g, r in results:
        assert np.all(d.holdout_labels[r.holdout_rows, g.finding] > 0.5) and len(r.holdout_raw) == len(r.holdout_rows)
        train[g.train] = np.maximum(train[g.train], r.raw)
        hold[r.holdout_rows] = np.maximum(hold[r.holdout_rows], r.holdout_raw)
    t = fpr_threshold(hold, 0.02)
    assert det.info["threshold"] == t and det.info["calibration"] == "sample"
    np.testing.assert_array_equal(det.flagged, train > t)
    assert det.info["holdout_above"] == (hold > t).sum() <= int(np.floor((len(hold) + 1) * 0.02)) - 1
    assert stats(det, truth)["recall"] == 1.0


@pytest.mark.parametrize("n_hold", [120, 400])
@pytest.mark.parametrize("method", ["spectral", "spectre"])
def test_sample_calibration_keeps_the_rate_on_exchangeable_features(method, n_hold):
    """Clean training and holdout features drawn alike (no memorisation), no floor: the per-sample rule flags
    about ``fpr`` of the clean training samples over four seeds (spectral 0.7% and 0.9%, with 120 and 400 holdout
    samples), where spending ``fpr`` in every group on its 30–120 holdout samples flags 1.3% and
    2.9%. Spectre flagged 8.4% and 2.3% while its holdout samples were scored under the estimate anchored on
    themselves (in-sample); jackknifed, it flags 1.0% and 0.7%."""
    rates = []
    for seed in range(4):
        d, truth = make_case(poison=20, seed=seed, n_hold=n_hold, memorised=(1.0, 1.0))
        det = run(method, d, calibration="sample", **FLOORLESS[method])
        rates.append(det.flagged[~truth].mean())
        assert det.flagged[truth].all()
    assert np.mean(rates) <= 0.015


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
    (leave-one-out for a small reference set), never on itself, as a scored training sample is out-of-sample."""
    from medbackdoor.defenses.spectre import Spectre

    d, _ = make_case(poison=0, n_hold=40)
    defense = Spectre(folds=1)
    (group, result), *_ = defense.group_results(d)[0]
    x, h = np.asarray(d.train_features)[group.train], np.asarray(d.holdout_features)[group.holdout]
    assert len(h) <= 20  # leave-one-out
    z, (_, zh) = defense._reduce(x, (x, h), defense.seed(d, group.finding))
    members = np.flatnonzero(d.holdout_labels[group.holdout, group.finding] > 0.5)
    for j, m in enumerate(members):
        rest = np.arange(len(zh)) != m
        expected = defense._anchored(z, zh[rest], z.shape[1])[0](zh[[m]])[0]
        np.testing.assert_allclose(result.holdout_raw[j], expected, rtol=1e-6)
    in_sample = defense._anchored(z, zh, z.shape[1])[0](zh[members])
    assert np.median(in_sample) < np.median(result.holdout_raw)  # the in-sample scores it replaces sit lower
