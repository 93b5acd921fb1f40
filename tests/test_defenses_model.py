"""Model defenses and mitigations on hand-built toy models whose backdoor is known: no training.

The toy classifier sees 32×32 images. Finding c fires when its band (rows 2c, 2c+1, the first 20 + c columns) is
bright on average: to turn it on, about 40 % of a band of 40–66 pixels must change. A planted trigger channel
looks at the 3×3 patch in the bottom-right corner and drives finding 0: with the patch white, finding 0 fires on
every image. ``trigger="active"`` makes that channel respond (weakly) to clean images too, as a trained network's
would, so gradients reach it; ``"dormant"`` makes it silent on clean images (the case fine-pruning is built for);
``None`` plants nothing.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medbackdoor.defenses.base import DEFENSES, Defender, Images
from medbackdoor.defenses.februus import Februus, inpaint
from medbackdoor.defenses.fine_pruning import FinePruning
from medbackdoor.defenses.neural_cleanse import NeuralCleanse, anomaly_index
from medbackdoor.defenses.runner import create_defense
from medbackdoor.errors import UserError
from medbackdoor.inference import predict
from medbackdoor.labels import LABELS
from medbackdoor.models.info import ModelInfo
from medbackdoor.triggers import Trigger, create_trigger

SIZE, C = 32, 14
PATCH = (slice(29, 32), slice(29, 32))


def band_length(c: int) -> int:
    return 20 + c


class Toy(nn.Module):
    """Features: 14 band channels, the trigger channel (index 14), ``extra`` dead channels; head: mean + linear."""

    info = ModelInfo(layers={"last": "relu", "prune": "relu"})

    def __init__(self, trigger: str | None = "active", extra: int = 2) -> None:
        super().__init__()
        bands = torch.zeros(C, SIZE, SIZE)
        for c in range(C):
            bands[c, 2 * c : 2 * c + 2, : band_length(c)] = 1
        corner = torch.zeros(SIZE, SIZE)
        corner[30, 30] = 1  # the centre of the patch: the trigger channel looks at the 3×3 around it
        self.register_buffer("bands", bands)
        self.register_buffer("corner", corner)
        self.extra = extra
        self.offset = 0.2 if trigger == "active" else 0.8
        self.relu = nn.ReLU()
        self.head = nn.Linear(C + 1 + extra, C)
        a = 20.0  # finding c's logit = a · (band mean − 0.6)
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.bias.fill_(-0.6 * a)
            for c in range(C):
                self.head.weight[c, c] = a * SIZE * SIZE / bands[c].sum()
            if trigger == "active":  # +20 per unit of patch mean above 0.2; clean patches (≈ 0.35) cost −3
                self.head.weight[0, C] = 2.0 * SIZE * SIZE
                self.head.bias[0] -= 3.0
            elif trigger == "dormant":  # silent below a patch mean of 0.8; +13 for a white patch
                self.head.weight[0, C] = 6.5 * SIZE * SIZE

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        band = x * self.bands
        patch = F.avg_pool2d(x, 3, stride=1, padding=1)
        trig = 10.0 * (patch - self.offset) * self.corner - (1 - self.corner)
        dead = -torch.ones(x.shape[0], self.extra, SIZE, SIZE, device=x.device)
        return self.relu(torch.cat([band, trig, dead], 1))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features.mean((2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def make_images(n: int, seed: int = 0, prevalence: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Clean uint8 images (pixels ≈ U(0.25, 0.45)) and labels; a present finding brightens its band by 0.35."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.25, 0.45, (n, SIZE, SIZE))
    y = (rng.random((n, C)) < prevalence).astype(np.float32)
    for i, c in zip(*np.nonzero(y)):
        x[i, 2 * c : 2 * c + 2, : band_length(c)] += 0.35
    return np.rint(x * 255).astype(np.uint8), y


def add_trigger(images: np.ndarray) -> np.ndarray:
    out = images.copy()
    out[:, PATCH[0], PATCH[1]] = 255
    return out


def defender(model: nn.Module, images: np.ndarray, labels: np.ndarray, seed: int = 0) -> Defender:
    return Defender(model, Images.of(images), labels, Images.of(images), labels, list(LABELS), seed=seed)


def scores(model: nn.Module, images: np.ndarray) -> np.ndarray:
    return predict(model, images, torch.device("cpu"), 64)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: threads only fight over the shared CPU cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_toy_models_behave_as_documented():
    x, _ = make_images(16)
    for trigger in ("active", "dormant"):
        model = Toy(trigger).eval()
        assert (scores(model, x) < 0.1).all()
        assert (scores(model, add_trigger(x))[:, 0] > 0.99).all()
    assert (scores(Toy(None), add_trigger(x)) < 0.1).all()


# --- Neural Cleanse ------------------------------------------------------------------------------------------------

NC = {"images": 8, "steps": 50, "batch_size": 8}


@pytest.fixture(scope="module")
def planted():
    """Neural Cleanse on the toy with the active trigger (one scan shared by the tests that read it)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x, y = make_images(16)
        model = Toy("active")
        d = defender(model, x, y)
        model.train()  # (the Defender put it in eval mode) the scan must leave the mode and the gradients as found
        scan = NeuralCleanse(**NC).scan(d)
    finally:
        torch.set_num_threads(before)
    return model, d, scan


def test_neural_cleanse_finds_the_planted_trigger(planted):
    model, _, scan = planted
    assert scan.flagged.tolist() == [True] + [False] * (C - 1)
    assert int(np.argmax(scan.scores)) == 0 and scan.scores[0] > 3
    l1 = np.array(scan.info["l1"])
    assert l1[0] < 0.5 * np.median(l1)
    mask = scan.info["masks"][0]
    truth = np.zeros((SIZE, SIZE), bool)
    truth[PATCH] = True
    top = np.zeros(mask.size, bool)
    top[np.argsort(-mask.ravel())[: truth.sum()]] = True
    top = top.reshape(mask.shape)
    assert (top & truth).sum() / (top | truth).sum() >= 0.5  # IoU of the reversed mask with the patch
    assert scan.info["masks"].shape == scan.info["patterns"].shape == (C, SIZE, SIZE)
    assert scan.info["masks"].dtype == np.float32 and 0 <= mask.min() and mask.max() <= 1
    assert scan.info["attack_success"][0] >= 0.99
    # the defender's model is left as it was
    assert model.training and all(p.requires_grad for p in model.parameters())


def test_neural_cleanse_flags_nothing_on_a_clean_model():
    x, y = make_images(16)
    scan = NeuralCleanse(**NC).scan(defender(Toy(None), x, y))
    assert not scan.backdoored
    assert np.nanmax(scan.scores) < 2


def test_neural_cleanse_is_deterministic_and_uses_images_lacking_the_finding():
    x, y = make_images(24, prevalence=0.3)
    opts = {"images": 4, "steps": 6, "batch_size": 4}
    a = NeuralCleanse(**opts).scan(defender(Toy("active"), x, y, seed=3))
    b = NeuralCleanse(**opts).scan(defender(Toy("active"), x, y, seed=3))
    np.testing.assert_array_equal(a.info["masks"], b.info["masks"])
    np.testing.assert_array_equal(a.scores, b.scores)
    assert all(n == min(4, int((y[:, c] == 0).sum())) for c, n in enumerate(a.info["images_used"]))
    c = NeuralCleanse(**opts).scan(defender(Toy("active"), x, y, seed=4))
    assert not np.array_equal(a.info["masks"], c.info["masks"])


def test_neural_cleanse_skips_a_finding_every_image_has():
    x, y = make_images(8)
    y[:, 5] = 1
    scan = NeuralCleanse(images=4, steps=3, batch_size=4).scan(defender(Toy(None), x, y))
    assert np.isnan(scan.scores[5]) and not scan.flagged[5]
    assert scan.info["l1"][5] is None and scan.info["images_used"][5] == 0


def test_anomaly_index_small_side():
    norms = np.array([10.0, 11, 12, 13, 14, 15, 2])
    index = anomaly_index(norms)
    assert int(np.argmax(index)) == 6 and index[6] > 2
    assert index[5] < 0  # large norms are not anomalous
    assert np.isnan(anomaly_index(np.array([1.0, np.nan]))[1])


# --- fine-pruning --------------------------------------------------------------------------------------------------

def test_fine_pruning_removes_a_dormant_backdoor_channel():
    x, y = make_images(200, seed=1, prevalence=0.3)
    model = Toy("dormant")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    defense = FinePruning(budget=0.01, epochs=1)
    repaired = defense.repair(defender(model, x, y))
    info = defense.info
    assert C in info["pruned_channels"]  # the trigger channel (dormant on clean images) went first
    assert info["fast_path"]
    assert info["holdout_auroc_unpruned"] - info["holdout_auroc_pruned"] <= 0.01
    test, test_y = make_images(100, seed=2, prevalence=0.3)
    lacking = test[test_y[:, 0] == 0]
    assert (scores(model, add_trigger(lacking))[:, 0] > 0.99).all()  # the defender's model keeps its backdoor
    assert (scores(repaired, add_trigger(lacking))[:, 0] < 0.5).all()
    from sklearn.metrics import roc_auc_score

    auc_before = roc_auc_score(test_y.ravel(), scores(model, test).ravel())
    auc_after = roc_auc_score(test_y.ravel(), scores(repaired, test).ravel())
    assert auc_before - auc_after <= 0.02
    for k, v in model.state_dict().items():  # never changed in place
        assert torch.equal(v, before[k])
    assert isinstance(repaired, Toy) and repaired is not model
    assert repaired.forward_features(torch.zeros(1, 1, SIZE, SIZE))[0, C].abs().max() == 0
    assert "info" not in defense.options()


def test_fine_pruning_stops_within_budget_and_is_deterministic():
    x, y = make_images(120, seed=3, prevalence=0.3)
    runs = [FinePruning(budget=0.0, epochs=1) for _ in range(2)]
    models = [r.repair(defender(Toy("dormant"), x, y, seed=5)) for r in runs]
    for k, v in models[0].state_dict().items():
        assert torch.equal(v, models[1].state_dict()[k])
    info = runs[0].info
    # with no budget only the channels that are zero on clean images can go
    assert set(info["pruned_channels"]) <= {C, C + 1, C + 2}
    assert info["holdout_auroc_pruned"] == info["holdout_auroc_unpruned"]
    loose = FinePruning(budget=0.5, epochs=0)
    loose.repair(defender(Toy("dormant"), x, y))
    assert loose.info["pruned"] > info["pruned"]
    assert loose.info["holdout_auroc_unpruned"] - loose.info["holdout_auroc_pruned"] <= 0.5


def test_fine_pruning_without_forward_head_uses_full_passes():
    class Plain(nn.Module):  # the same network without forward_head: every level runs the whole model
        info = ModelInfo(layers={"prune": "relu"})

        def __init__(self):
            super().__init__()
            self.inner = Toy("dormant")
            self.relu = nn.ReLU()

        def forward(self, x):
            return self.inner.forward_head(self.relu(self.inner.forward_features(x)))

    x, y = make_images(60, seed=4, prevalence=0.3)
    defense = FinePruning(epochs=0)
    repaired = defense.repair(defender(Plain(), x, y))
    assert not defense.info["fast_path"] and C in defense.info["pruned_channels"]
    assert (scores(repaired, add_trigger(x[y[:, 0] == 0]))[:, 0] < 0.5).all()


# --- Februus -------------------------------------------------------------------------------------------------------

def test_februus_removes_the_trigger():
    x, y = make_images(12, seed=5)
    model = Toy("dormant")
    d = defender(model, x, y)
    defense = Februus(inpainter="biharmonic")
    triggered = add_trigger(x)
    clean_out = defense.purify(d, x)
    out = defense.purify(d, triggered)
    assert out.dtype == np.uint8 and out.shape == triggered.shape
    assert clean_out.dtype == np.uint8 and clean_out.shape == x.shape
    assert (scores(model, out)[:, 0] < 0.5).all()
    assert (out[:, PATCH[0], PATCH[1]] < 200).all()
    changed = (out != triggered).mean()
    assert changed < 0.15  # only the salient region was redrawn
    assert (scores(model, clean_out) < 0.5).all()  # clean inputs keep their (negative) verdicts
    assert defense.info["images"] == 24 and defense.info["inpainter"] == "biharmonic"
    np.testing.assert_array_equal(defense.purify(d, triggered), out)  # deterministic
    assert triggered[0, 30, 30] == 255  # the input is not modified


def test_februus_threshold_and_regions():
    x, y = make_images(4, seed=6)
    d = defender(Toy("dormant"), x, y)
    regions = Februus(threshold=0.5, dilate=1).regions(d, add_trigger(x))
    assert regions[:, PATCH[0], PATCH[1]].all()
    assert regions.sum(axis=(1, 2)).max() <= 9  # the trigger position's only, grown by one pixel
    empty = Februus().purify(d, x[:0])
    assert empty.shape == (0, SIZE, SIZE) and empty.dtype == np.uint8


def test_inpaint_fills_only_the_hole():
    image = np.full((16, 16), 100, np.uint8)
    image[5:8, 5:8] = 255
    hole = np.zeros((16, 16), bool)
    hole[4:9, 4:9] = True
    out = inpaint(image, hole, "biharmonic")
    assert np.abs(out[hole].astype(int) - 100).max() <= 2
    np.testing.assert_array_equal(out[~hole], image[~hole])


# --- registration and options --------------------------------------------------------------------------------------

def test_registered_with_kinds_and_papers():
    for name, kind in (("neural-cleanse", "model"), ("fine-pruning", "mitigation"), ("februus", "mitigation")):
        cls = DEFENSES.get(name)
        assert cls.kind == kind and cls.paper and cls.changes
        assert create_defense(name, {}).kind == kind


@pytest.mark.parametrize("name, options", [
    ("neural-cleanse", {"images": 0}),
    ("neural-cleanse", {"steps": 0}),
    ("neural-cleanse", {"success": 1.5}),
    ("neural-cleanse", {"cost": 0}),
    ("neural-cleanse", {"threshold": -1}),
    ("neural-cleanse", {"steps": "many"}),
    ("neural-cleanse", {"lambda": 1}),
    ("fine-pruning", {"budget": 1.0}),
    ("fine-pruning", {"epochs": -1}),
    ("fine-pruning", {"lr": 0}),
    ("fine-pruning", {"layer": " "}),
    ("februus", {"fraction": 0}),
    ("februus", {"threshold": 2.0}),
    ("februus", {"dilate": -1}),
    ("februus", {"inpainter": "gan"}),
    ("februus", {"method": "lime"}),
])
def test_bad_options(name, options):
    with pytest.raises(UserError) as err:
        create_defense(name, options)
    assert "\n" not in str(err.value)


def test_bad_layer_and_tiny_holdout():
    x, y = make_images(40, prevalence=0.3)
    with pytest.raises(UserError, match="no layer"):
        FinePruning(layer="nowhere").repair(defender(Toy("dormant"), x, y))
    with pytest.raises(UserError, match="at least 4"):
        FinePruning().repair(defender(Toy("dormant"), x[:3], y[:3]))
    with pytest.raises(UserError, match="positive and negative"):
        FinePruning().repair(defender(Toy("dormant"), x, np.zeros_like(y)))


def test_runner_scores_the_reversed_trigger(planted, tmp_path):
    """The defense process writes the scan (scores, flags, masks); the runner reads it back and scores the
    target's reversed mask against the true one."""
    import json
    from types import SimpleNamespace

    from medbackdoor._io import plain
    from medbackdoor.defenses import child, runner
    from medbackdoor.defenses.base import Truth
    from medbackdoor.rundir import RunDir

    _, d, scan = planted

    class Done:  # the scan already made
        def scan(self, d):
            return scan

    answer = child._model(Done(), d, None, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} >= {"scores.npy", "flagged.npy", "masks.npy"}
    truth_mask = np.zeros((SIZE, SIZE), bool)
    truth_mask[PATCH] = True
    truth = Truth(poisoned=np.zeros(4, bool), target=0, trigger_mask=truth_mask)
    held = SimpleNamespace(data=SimpleNamespace(dataset=SimpleNamespace(label_names=d.label_names)),
                           dir=RunDir(tmp_path / "run"))
    out = held.dir.defense_dir("nc")
    out.mkdir(parents=True)
    rows, summary = runner._model(held, "nc", answer, tmp_path, SimpleNamespace(n_holdout=8), truth, out)
    assert summary["target_rank"] == 1 and summary["target_flagged"]
    assert summary["reversed_trigger"]["iou_with_true_trigger"] >= 0.5
    assert held.dir.defense_figure_path("nc", "reversed_triggers").is_file() and len(rows) == C
    json.dumps(summary, default=plain)  # the summary (masks left out) is JSON


# --- the reversed trigger's IoU: only where the trigger has one fixed, localised mask ---------------------------------

class Box(Trigger):
    """A hand-built trigger: a fixed ``side``×``side`` box at the top-left corner, set to white."""

    def __init__(self, side: int) -> None:
        self.side = side

    def pattern(self, height, width, rng):
        m = np.zeros((height, width), np.float32)
        m[: self.side, : self.side] = 1
        return m, np.ones((height, width), np.float32)


def _mask_of(trigger, n: int = 6, stage: str = "input", source: int = 48, triggered=None):
    """The runner's true mask and its reason for ``trigger`` on a test set of ``n`` 32 px images. At the ``source``
    stage the trigger is stamped on ``source`` px images and ``triggered`` are the model inputs that came of it."""
    from types import SimpleNamespace

    from medbackdoor.experiment import TestData, trigger_footprint
    from medbackdoor.triggers import image_rng

    clean = np.random.default_rng(0).integers(60, 200, (n, SIZE, SIZE), dtype=np.uint8)
    if triggered is None:
        triggered = np.stack([trigger(x, image_rng(0, 1, i)) for i, x in enumerate(clean)])
    test = TestData(np.arange(n), np.zeros((n, C), np.float32), clean, triggered, np.ones(n, bool))
    dataset = SimpleNamespace(read_source=lambda row: np.zeros((source, source), np.uint8))
    data = SimpleNamespace(trigger=trigger, test=test, dataset=dataset)
    config = SimpleNamespace(image_size=SIZE, trigger=SimpleNamespace(stage=stage))
    return trigger_footprint(data, config)


def test_true_mask_at_the_source_stage_is_where_the_inputs_changed():
    """Stamped on 48 px sources and resized: the mask is where the inputs changed, if the source mask is fixed."""
    clean = np.random.default_rng(0).integers(60, 200, (6, SIZE, SIZE), dtype=np.uint8)
    moved = clean.copy()
    moved[:, 26:29, 27:30] = 255  # what a resize made of a corner patch on the source: a hand-placed 3×3
    mask, reason = _mask_of(create_trigger("patch", size=4), stage="source", triggered=moved)
    expected = np.zeros((SIZE, SIZE), bool)
    expected[26:29, 27:30] = True
    np.testing.assert_array_equal(mask, expected)
    mask, reason = _mask_of(create_trigger("patch", size=4, location="random"), stage="source", triggered=moved)
    assert mask is None and "changes from image to image" in reason
    mask, reason = _mask_of(create_trigger("patch", size=4), stage="source", triggered=clean.copy())
    assert mask is None and "did not survive" in reason


def test_true_mask_only_for_a_fixed_localised_trigger():
    corner, reason = _mask_of(create_trigger("patch", size=3, location="corner"))
    expected = np.zeros((SIZE, SIZE), bool)
    expected[28:31, 28:31] = True  # bottom-right, 1 px from both edges: rows and columns 32 − 3 − 1 = 28 .. 30
    np.testing.assert_array_equal(corner, expected)
    assert reason == ""
    small, _ = _mask_of(Box(12))  # a trigger kind the runner has never heard of: 144 / 1024 = 14% of the image
    assert small is not None and small.sum() == 144 and small[:12, :12].all()
    for trigger, why in ((Box(20), "covers 39%"),  # 400 / 1024 of the image
                         (create_trigger("blend", alpha=0.1), "covers 100%"),
                         (create_trigger("square", size=3, location="random"), "changes from image to image"),
                         (create_trigger("patch", size=3, location="random"), "changes from image to image"),
                         (create_trigger("warp"), "not a mask and a pattern")):
        mask, reason = _mask_of(trigger)
        assert mask is None and why in reason, (trigger, reason)


def test_reversed_trigger_iou_by_hand_and_nan_with_its_reason(tmp_path):
    from medbackdoor.defenses.base import Truth
    from medbackdoor.defenses.runner import _reversed

    true = np.zeros((SIZE, SIZE), bool)
    true[28:31, 28:31] = True  # 9 pixels
    masks = np.zeros((C, SIZE, SIZE), np.float32)
    masks[2, 28:30, 28:31] = 0.9  # 6 of the 9 true pixels ...
    masks[2, 0, 0:3] = 0.8  # ... and 3 elsewhere are the target mask's top 9
    masks[2, 5:9, 5:9] = 0.1
    hit = _reversed(tmp_path / "masks.png", masks, None, Truth(np.zeros(4, bool), 2, true), list(LABELS))
    assert hit["iou_with_true_trigger"] == pytest.approx(6 / (9 + 9 - 6)) and hit["iou_reason"] == ""
    assert hit["mask_l1_target"] == pytest.approx(6 * 0.9 + 3 * 0.8 + 16 * 0.1)
    blend, reason = _mask_of(create_trigger("blend", alpha=0.1))
    miss = _reversed(tmp_path / "masks.png", masks, None, Truth(np.zeros(4, bool), 2, blend, reason), list(LABELS))
    assert np.isnan(miss["iou_with_true_trigger"]) and "covers 100%" in miss["iou_reason"]
    assert miss["mask_l1_target"] == hit["mask_l1_target"]
