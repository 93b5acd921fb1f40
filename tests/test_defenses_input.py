"""Input defenses on a hand-built model whose backdoor is known: a dark 3×3 spot fires finding 0.

No training: :class:`PlantedNet` is written by hand. Finding 0 is a local-contrast detector (a spot darker than
its 9×9 surround), so it fires on the trigger, keeps firing when the input is blended with a clean image (at half
contrast) or amplified (black stays black), and its Grad-CAM is a sharp spot. Findings 1–13 follow smooth image
content through fixed random templates, calibrated so that clean images score about 0.2 on each, and the spot
silences them, as the paper's one-hot attack teaches a model to.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import nn

from medbackdoor.defenses import sentinet as sentinet_module
from medbackdoor.defenses import strip as strip_module
from medbackdoor.defenses.base import DEFENSES, Defender, Images, InputDefense, fpr_threshold, smoothed_pvalues
from medbackdoor.defenses.saliency import Saliency
from medbackdoor.defenses.scale_up import ScaleUp
from medbackdoor.defenses.scoring import tpr_at_fpr
from medbackdoor.defenses.sentinet import SentiNet, top_region
from medbackdoor.defenses.strip import Strip
from medbackdoor.errors import UserError
from medbackdoor.labels import LABELS
from medbackdoor.models.info import ModelInfo

SIZE = 32
METHODS = ("strip", "scale-up", "sentinet", "saliency")


class PlantedNet(nn.Module):
    """Finding 0 = a dark spot (the trigger); findings 1–13 = smooth content.

    The feature map goes through two ReLUs, declared as its ``middle`` (``features.transition3.relu``) and ``last``
    (``relu``) Grad-CAM layers, so both layer options work and give the same map.
    """

    info = ModelInfo(layers={"last": "relu", "middle": "features.transition3.relu", "prune": "relu"})

    def __init__(self, size: int = SIZE, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        low = torch.randn(1, 13, 3, 3, generator=g)
        self.templates = nn.Parameter(F.interpolate(low, size=(size, size), mode="bilinear")[0])
        self.features = nn.Sequential(OrderedDict(transition3=nn.Sequential(OrderedDict(relu=nn.ReLU()))))
        self.relu = nn.ReLU()
        self.classifier = nn.Linear(14, 14)
        with torch.no_grad():
            self.classifier.weight.copy_(torch.diag(torch.tensor([4.0 * size * size] + [1.0] * 13)))
            self.classifier.weight[1:, 0] = -3.0 * size * size  # the spot silences the rest: a one-hot backdoor
            self.classifier.bias.copy_(torch.tensor([-4.0] + [0.0] * 13))

    def fit(self, images: np.ndarray) -> PlantedNet:
        """Standardise findings 1–13 on clean images (a clean image scores sigmoid(−1.5) ≈ 0.18 on average)."""
        with torch.no_grad():
            f = self.forward_features(as_input(images)).mean((2, 3))[:, 1:]
            self.classifier.weight[1:, 1:] = torch.diag(1 / f.std(0))
            self.classifier.bias[1:] = -f.mean(0) / f.std(0) - 1.5
        return self.eval()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        center = F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
        surround = F.avg_pool2d(x, 9, 1, 4, count_include_pad=False)
        smooth = F.avg_pool2d(x, 5, 1, 2, count_include_pad=False)
        content = 4 * (smooth - 0.7) * self.templates + 1
        return self.relu(self.features(torch.cat([surround - center - 0.05, content], 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x).mean((2, 3)))


def as_input(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).float()[:, None] / 255


def smooth_images(n: int, seed: int, size: int = SIZE) -> np.ndarray:
    """Clean images: a bilinear 4×4 random field in [0.45, 0.95] plus a little noise, uint8."""
    rng = np.random.default_rng(seed)
    low = torch.from_numpy(rng.uniform(0.45, 0.95, (n, 1, 4, 4)).astype(np.float32))
    x = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)[:, 0].numpy()
    x = x + rng.normal(0, 0.01, x.shape)
    return (np.clip(x, 0, 1) * 255).round().astype(np.uint8)


def stamp(images: np.ndarray) -> np.ndarray:
    """The paper's trigger: a black 3×3 square at the centre."""
    out = images.copy()
    c = images.shape[1] // 2
    out[:, c - 1 : c + 2, c - 1 : c + 2] = 0
    return out


def defender(model: nn.Module, holdout: np.ndarray, batch_size: int = 64, seed: int = 0, train=None) -> Defender:
    train = Images.of(smooth_images(8, seed=3)) if train is None else train
    return Defender(model, train, np.zeros((len(train), 14)), Images.of(holdout), np.zeros((len(holdout), 14)),
                    list(LABELS), "cpu", batch_size=batch_size, seed=seed)


@pytest.fixture(scope="module")
def setup():
    model = PlantedNet().fit(smooth_images(300, seed=9))
    clean = smooth_images(40, seed=2)
    return model, smooth_images(80, seed=1), clean, stamp(clean)


def create(name: str, **options) -> InputDefense:
    return DEFENSES.create_checked(name, options)


FAST = {"strip": {"k": 4}, "sentinet": {"k": 4}}  # fewer blends / pastes where the cost scales with k


def test_the_planted_backdoor_works(setup):
    model, _, clean, triggered = setup
    with torch.no_grad():
        pc, pt = torch.sigmoid(model(as_input(clean))), torch.sigmoid(model(as_input(triggered)))
    assert pt[:, 0].min() > 0.9 and pc[:, 0].mean() < 0.2
    assert 0.1 < pc[:, 1:].mean() < 0.35  # the content findings are neither silent nor always on


def test_all_registered_as_input_defenses():
    for name in METHODS:
        defense = create(name)
        assert defense.kind == "input" and defense.paper and defense.changes


@pytest.mark.parametrize("name, options", [
    ("strip", {"k": 4}), ("strip", {"k": 4, "baseline": "mean"}),
    ("scale-up", {"consistency": "vector"}), ("scale-up", {"consistency": "probability"}),
    ("sentinet", {"k": 4}), ("sentinet", {"k": 4, "measure": "confidence"}),
    ("sentinet", {"k": 4, "layer": "last", "measure": "fooled"}),
    ("saliency", {}), ("saliency", {"detector": "concentration"}), ("saliency", {"layer": "middle"}),
])
def test_separates_triggered_from_clean(setup, name, options):
    model, holdout, clean, triggered = setup
    d = defender(model, holdout)
    defense = create(name, **options)
    threshold = defense.calibrate(d)
    sc, st = defense.score(d, Images.of(clean)), defense.score(d, Images.of(triggered))
    assert sc.shape == st.shape == (len(clean),) and np.isfinite(np.r_[sc, st]).all()
    y, s = np.r_[np.zeros(len(sc)), np.ones(len(st))], np.r_[sc, st]
    assert roc_auc_score(y, s) >= 0.95
    assert tpr_at_fpr(y, s, 0.05) >= 0.8
    assert np.isfinite(threshold) and defense.flag(st).mean() >= 0.8 and defense.flag(sc).mean() <= 0.2


def test_strip_entropy_is_the_paper_statistic():
    """A model that outputs 0.5 everywhere: every blend has the maximal entropy 14·ln 2, so the score is −14·ln 2."""

    class Half(nn.Module):
        def __init__(self):
            super().__init__()
            self.relu = nn.ReLU()
            self.w = nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return self.w * x.mean((1, 2, 3))[:, None].expand(-1, 14)

    d = defender(Half(), smooth_images(20, seed=1))
    scores = create("strip", score="entropy", k=3).score(d, Images.of(smooth_images(5, seed=2)))
    assert np.allclose(scores, -14 * np.log(2), atol=1e-4)


def test_scale_up_normalisation_discounts_findings_scaling_alone_turns_on(setup):
    """Amplified clean images saturate, and some content findings then fire on every one of them: an image whose
    top finding is one of those is as consistent as a triggered one, unless normalised by benign consistency."""
    model, holdout, clean, triggered = setup
    d = defender(model, holdout)
    y = np.r_[np.zeros(len(clean)), np.ones(len(triggered))]
    auroc = {}
    for normalise in (False, True):
        defense = create("scale-up", consistency="indicator", normalise=normalise)
        auroc[normalise] = roc_auc_score(y, np.r_[defense.score(d, clean), defense.score(d, triggered)])
    assert auroc[True] >= 0.9 and auroc[True] > auroc[False] + 0.1  # the indicator ties: 0.94 here, 0.76 raw


def test_sentinet_pastes_the_trigger(setup):
    model, holdout, _, triggered = setup
    d = defender(model, holdout)
    from medbackdoor.defenses.saliency import cam_maps

    masks = top_region(cam_maps(d, triggered[:8], np.zeros(8, int), "last"), 0.02).numpy()
    c = SIZE // 2
    assert masks[:, c, c].all()  # the trigger's centre is in every pasted region
    assert np.allclose(masks.sum((1, 2)), round(0.02 * SIZE * SIZE))


def test_top_region_picks_the_brightest_pixels():
    maps = np.zeros((2, 4, 4), np.float32)
    maps[0, 1, 2], maps[0, 3, 3], maps[1, 0, 0] = 1.0, 0.5, 0.2
    masks = top_region(maps, 2 / 16).numpy()
    assert masks[0, 1, 2] == masks[0, 3, 3] == 1 and masks[0].sum() == 2
    assert masks[1, 0, 0] == 1 and masks[1].sum() == 2


@pytest.mark.parametrize("target", ["Flu", 14, "Pleural Effusion"])
def test_saliency_target_is_checked_against_the_runs_labels(setup, target):
    """A finding the run's dataset lacks fails in one line when the defense meets the run (its labels)."""
    model, holdout, clean, _ = setup
    with pytest.raises(UserError) as err:
        create("saliency", target=target).score(defender(model, holdout), clean[:2])
    assert "\n" not in str(err.value)


def test_saliency_explains_a_named_finding(setup):
    model, holdout, clean, triggered = setup
    d = defender(model, holdout)
    fixed, predicted = create("saliency", target=LABELS[0]), create("saliency")
    assert np.allclose(fixed.score(d, triggered), predicted.score(d, triggered))  # finding 0 is the top one
    assert not np.allclose(fixed.score(d, clean), predicted.score(d, clean))


class Spy(np.ndarray):
    """Pixels that record the rows of every read (or refuse to be read); a Defender takes them as an array."""

    def __new__(cls, array: np.ndarray, refuse: bool = False) -> Spy:
        spy = np.asarray(array).view(cls)
        spy.refuse, spy.reads = refuse, []
        return spy

    def __array_finalize__(self, obj) -> None:
        self.refuse, self.reads = getattr(obj, "refuse", False), []

    def __getitem__(self, sel):
        if self.refuse:
            raise AssertionError("an input defense read images it must not read")
        rows = sel[0] if isinstance(sel, tuple) else sel
        self.reads.append(np.arange(len(self))[rows])
        return np.asarray(self)[sel]

    def rows_read(self) -> set[int]:
        return set(np.concatenate([np.ravel(r) for r in self.reads]).tolist()) if self.reads else set()


@pytest.mark.parametrize("name", METHODS)
def test_calibration_reads_the_holdout_only_and_the_method_its_first_half(setup, name):
    model, holdout, clean, _ = setup
    hold, test = Spy(holdout), Spy(clean[:12])
    d = Defender(model, Images.of(Spy(smooth_images(8, seed=3), refuse=True)), np.zeros((8, 14)), Images.of(hold),
                 np.zeros((len(holdout), 14)), list(LABELS), "cpu", batch_size=64, seed=0)
    defense = create(name, **FAST.get(name, {}))
    defense.score(d, Images.of(test))  # test images scored first: calibrating must not reuse them
    assert test.rows_read() == set(range(12))
    hold.reads.clear()
    test.refuse = True  # calibrating reads no test image, and no training image (that spy refuses every read)
    threshold = defense.calibrate(d)
    assert set(range(40, 80)) <= hold.rows_read() <= set(range(80))  # the second half calibrates
    assert threshold == create(name, **FAST.get(name, {})).calibrate(defender(model, holdout))  # no test image in it
    # the method's own reference images are the first half: changing the second half changes no score
    other = holdout.copy()
    other[40:] = stamp(other[40:])
    a = defense.score(defender(model, holdout), clean[:12])
    b = defense.score(defender(model, other), clean[:12])
    assert np.array_equal(a, b)


@pytest.mark.parametrize("calibration, n", [("split", 40), ("crossfit", 80)])
@pytest.mark.parametrize("fpr", [0.01, 0.03, 0.05, 0.1, 0.25])
@pytest.mark.parametrize("name", METHODS)
def test_calibrated_threshold_is_the_conformal_quantile(setup, name, fpr, calibration, n):
    """Counted by hand on the n calibration scores (the second half scored as a test input is; under crossfit the
    first half too, with the second as the reference): at most m = ⌊(n+1)·fpr⌋ − 1 lie above the threshold and
    more than m at or above it; with m < 0 (too few images to promise fpr) nothing is flagged."""
    model, holdout, _, _ = setup
    d = defender(model, holdout)
    defense = create(name, fpr=fpr, calibration=calibration, ties="conservative", **FAST.get(name, {}))
    threshold = defense.calibrate(d)
    scores = defense.calibration_scores(d)
    assert len(scores) == n == defense.calibrated_on
    np.testing.assert_array_equal(scores[:40], defense.score(d, holdout[40:]))  # scored as a test input is
    m = int(np.floor((n + 1) * fpr + 1e-9)) - 1
    if m < 0:
        assert threshold == np.inf and not defense.flag(scores).any()
        return
    assert (scores > threshold).sum() <= m < (scores >= threshold).sum()
    np.testing.assert_array_equal(defense.flag(scores), scores > threshold)


@pytest.mark.parametrize("name", METHODS)
def test_split_calibration_uses_the_second_half_only(setup, name):
    """Split conformal, from its definition: the 40 calibration scores are the second half's, scored as test
    inputs are, with the first half as the method's reference: a defender whose holdout is the first half and 40
    unrelated images (stamped with the trigger) scores them alike. The threshold is their (m+1)-th largest,
    m = ⌊41·0.1⌋ − 1 = 3 (the 4th largest): at most 3 scores lie above it, at least 4 at or above it, and exactly
    those above it are flagged (``ties: conservative``)."""
    model, holdout, _, _ = setup
    d = defender(model, holdout)
    split = create(name, fpr=0.1, calibration="split", ties="conservative", **FAST.get(name, {}))
    threshold = split.calibrate(d)
    other_second_half = np.concatenate([holdout[:40], stamp(smooth_images(40, seed=11))])
    second = split.score(defender(model, other_second_half), holdout[40:])  # reference: holdout[:40] alone
    np.testing.assert_array_equal(split.calibration_scores(d), second)
    assert threshold == np.sort(second)[::-1][3]
    np.testing.assert_array_equal(split.flag(second), second > threshold)
    assert (second > threshold).sum() <= 3 < (second >= threshold).sum()
    assert split.options()["calibration"] == "split"
    assert create(name, **FAST.get(name, {})).options()["calibration"] == "split"


@pytest.mark.parametrize("n, fpr", [(10, 0.05), (19, 0.05), (59, 0.05), (60, 0.05), (120, 0.05), (99, 0.01),
                                    (40, 0.25), (7, 0.5)])
def test_fpr_threshold_is_conformal(n, fpr):
    """Leave-one-out over n + 1 distinct clean scores: the share of them above the threshold of the other n is the
    expected rate of a new exchangeable clean score, exactly (m + 1)/(n + 1) ≤ fpr, and above fpr − 1/(n + 1)."""
    values = np.random.default_rng(n).permutation(n + 1).astype(np.float64)
    flagged = [values[i] > fpr_threshold(np.delete(values, i), fpr) for i in range(n + 1)]
    rate = np.mean(flagged)
    m = int(np.floor((n + 1) * fpr + 1e-9)) - 1
    assert rate == max(m + 1, 0) / (n + 1)
    assert fpr - 1 / (n + 1) < rate <= fpr + 1e-12
    assert fpr_threshold(np.zeros(0), fpr) == np.inf


class FixedDraw:
    """A stand-in generator whose every draw is ``u``: integrates a randomised rule over U on a grid."""

    def __init__(self, u: float) -> None:
        self.u = u

    def random(self, n: int) -> np.ndarray:
        return np.full(n, self.u)


@pytest.mark.parametrize("n, fpr", [(40, 0.05), (59, 0.05), (19, 0.05), (99, 0.01), (12, 0.25)])
@pytest.mark.parametrize("values", ["distinct", "tied"])
def test_smoothed_pvalue_keeps_the_rate_exactly_even_with_ties(n, fpr, values):
    """Leave-one-out over n + 1 exchangeable clean scores, U integrated on a fine grid: the smoothed conformal
    p-value flags a share fpr of them (exactly, up to the grid), where the conservative threshold of a tied set
    flags far fewer: 80% of the scores share the top value."""
    rng = np.random.default_rng(n)
    if values == "tied":
        scores = np.where(rng.random(n + 1) < 0.8, 2.0, rng.integers(0, 2, n + 1).astype(np.float64))
    else:
        scores = rng.permutation(n + 1).astype(np.float64)
    grid = (np.arange(2000) + 0.5) / 2000
    rate = np.mean([[smoothed_pvalues(np.delete(scores, i), scores[i:i + 1], FixedDraw(u))[0] <= fpr
                     for i in range(n + 1)] for u in grid])
    assert abs(rate - fpr) < 1e-3
    conservative = np.mean([scores[i] > fpr_threshold(np.delete(scores, i), fpr) for i in range(n + 1)])
    assert conservative <= fpr + 1e-12
    if values == "tied":
        assert conservative < fpr / 2  # the failure ``ties: random`` exists for


@pytest.mark.parametrize("name", METHODS)
def test_random_ties_flag_whatever_the_conservative_rule_flags_and_are_seeded(setup, name):
    """Every score above the conservative threshold is flagged under ``ties: random`` too (its p-value is at most
    (m + 1)/(n + 1) whatever U); the draws come from the defender's seed, so a rerun flags the same images."""
    model, holdout, clean, triggered = setup
    scores = np.concatenate([create(name, **FAST.get(name, {})).score(defender(model, holdout), clean[:30]),
                             create(name, **FAST.get(name, {})).score(defender(model, holdout), triggered[:30])])
    flags = []
    for _ in range(2):
        defense = create(name, fpr=0.1, ties="random", **FAST.get(name, {}))
        threshold = defense.calibrate(defender(model, holdout))
        flags.append(defense.flag(scores))
        assert defense.options()["ties"] == "random"
    np.testing.assert_array_equal(flags[0], flags[1])
    assert flags[0][scores > threshold].all()
    assert create(name, **FAST.get(name, {})).options()["ties"] == "random"  # the default


@pytest.mark.parametrize("name", METHODS)
def test_deterministic_and_independent_of_batching(setup, name):
    model, holdout, clean, triggered = setup
    images = np.concatenate([clean[:10], triggered[:10]])
    options = FAST.get(name, {})
    first = create(name, **options).score(defender(model, holdout, batch_size=64), images)
    again = create(name, **options).score(defender(model, holdout, batch_size=64), images)
    small = create(name, **options).score(defender(model, holdout, batch_size=12), images)
    assert np.array_equal(first, again)
    assert np.allclose(first, small, atol=1e-5)


@pytest.mark.parametrize("name", METHODS)
def test_empty_input(setup, name):
    model, holdout, _, _ = setup
    none = np.zeros((0, SIZE, SIZE), np.uint8)
    assert create(name, **FAST.get(name, {})).score(defender(model, holdout), none).shape == (0,)


def test_seed_picks_the_references(setup):
    model, holdout, clean, _ = setup
    a = create("strip", k=4).score(defender(model, holdout, seed=0), clean[:10])
    b = create("strip", k=4).score(defender(model, holdout, seed=1), clean[:10])
    assert not np.array_equal(a, b)


@pytest.mark.parametrize("name, options", [
    ("strip", {"alpha": 0.0}), ("strip", {"alpha": 1.0}), ("strip", {"k": 0}), ("strip", {"score": "softmax"}),
    ("strip", {"baseline": "median"}), ("strip", {"baseline_images": 1}), ("strip", {"fpr": 0.0}),
    ("strip", {"k": "eight"}),
    ("scale-up", {"max_scale": 1}), ("scale-up", {"consistency": "argmax"}), ("scale-up", {"threshold": 1.0}),
    ("scale-up", {"min_count": 1}), ("scale-up", {"normalise": "yes"}), ("scale-up", {"fpr": 1.0}),
    ("sentinet", {"fraction": 0.0}), ("sentinet", {"fraction": 0.9}), ("sentinet", {"k": 0}),
    ("sentinet", {"layer": "first"}), ("sentinet", {"measure": "rate"}), ("sentinet", {"neutral": "zero"}),
    ("sentinet", {"threshold": 0.0}),
    ("saliency", {"detector": "peak"}), ("saliency", {"layer": "features.denseblock3"}),
    ("saliency", {"target": ""}),
    ("saliency", {"colour": "red"}),
    *[(m, {"calibration": "jackknife"}) for m in METHODS],
    *[(m, {"ties": "up"}) for m in METHODS],
])
def test_bad_options_fail_in_one_line(name, options):
    with pytest.raises(UserError) as err:
        create(name, **options)
    assert "\n" not in str(err.value)


def test_too_few_reference_images(setup):
    model, _, clean, _ = setup
    d = defender(model, smooth_images(6, seed=1))  # 3 reference images
    for defense in (Strip(k=4), SentiNet(k=4)):
        with pytest.raises(UserError, match="reference images"):
            defense.score(d, clean[:2])
    with pytest.raises(UserError, match="reference images"):
        Strip(k=3).score(d, clean[:2])  # 3 to blend with, none left for the baseline
    with pytest.raises(UserError, match="reference images"):
        ScaleUp(min_count=5).score(d, clean[:2])


def test_options_report_the_user_names():
    assert Strip(score="entropy").options()["score"] == "entropy"
    assert set(Saliency().options()) == {"detector", "layer", "target", "fpr", "calibration", "ties"}
    assert sentinet_module.STREAM != strip_module.STREAM
