"""ANP, I-BAU, FT-SAM and IBD-PSC on small trained networks with a backdoor planted by data poisoning
(:mod:`planted`), and on their clean controls.

Each repair must lower the planted model's ASR (the trigger turning finding 0 on, on test images that lack it)
and cost no more clean micro AUROC than its budget; on the clean control it must keep the AUROC. The thresholds
are far from what these runs measure (ANP brings ASR 1.0 to about 0.1, I-BAU and FT-SAM to about 0.4), so a
different machine's rounding cannot cross them.
"""

from __future__ import annotations

import numpy as np
import planted
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from medbackdoor.defenses.anp import ANP
from medbackdoor.defenses.base import DEFENSES, Defender, Images
from medbackdoor.defenses.ft_sam import FTSAM
from medbackdoor.defenses.i_bau import IBAU
from medbackdoor.defenses.ibd_psc import IBDPSC
from medbackdoor.defenses.runner import create_defense
from medbackdoor.errors import UserError
from medbackdoor.labels import LABELS

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def nets():
    """The planted model and the clean control (trained once for the module), with a clean holdout and test set."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        backdoored, x, y = planted.train(poison=0.1)
        clean, cx, cy = planted.train(poison=0.0)
    finally:
        torch.set_num_threads(before)
    hold = planted.make_images(120, seed=5)
    test = planted.make_images(200, seed=9)
    return {"backdoored": (backdoored, x, y), "clean": (clean, cx, cy), "holdout": hold, "test": test}


def defender(nets, which: str, seed: int = 0) -> Defender:
    model, x, y = nets[which]
    hx, hy = nets["holdout"]
    return Defender(model, Images.of(x), y, Images.of(hx), hy, list(LABELS), seed=seed)


def asr(model: nn.Module, nets) -> float:
    tx, ty = nets["test"]
    lacking = tx[ty[:, 0] == 0]
    return float((planted.scores(model, planted.add_trigger(lacking))[:, 0] > 0.6).mean())


def auroc(model: nn.Module, nets) -> float:
    tx, ty = nets["test"]
    return float(roc_auc_score(ty.ravel(), planted.scores(model, tx).ravel()))


def test_the_planted_model_has_its_backdoor_and_the_control_not(nets):
    assert asr(nets["backdoored"][0], nets) >= 0.95
    assert asr(nets["clean"][0], nets) <= 0.05
    assert auroc(nets["backdoored"][0], nets) >= 0.95 and auroc(nets["clean"][0], nets) >= 0.95


def unchanged(model: nn.Module, before: dict) -> bool:
    return all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("defense, most_asr", [
    (ANP(max_fraction=0.3, steps=200), 0.5),
    (FTSAM(), 0.75),
])
def test_a_repair_removes_the_planted_backdoor_within_budget(nets, defense, most_asr):
    d = defender(nets, "backdoored")
    state = {k: v.clone() for k, v in d.model.state_dict().items()}
    repaired = defense.repair(d)
    assert asr(repaired, nets) <= most_asr
    assert auroc(repaired, nets) >= auroc(d.model, nets) - 0.02
    assert unchanged(d.model, state) and repaired is not d.model  # the defender's model is never changed
    assert isinstance(repaired, planted.TinyNet) and not repaired.training
    assert "info" not in defense.options()


def test_i_bau_removes_the_planted_backdoor_from_some_start(nets):
    """I-BAU's inner search for a universal perturbation starts from 0 and takes a few steps; on the toy whether it
    finds the dim corner patch depends on the batch order (the defender's seed) and on the machine's floating
    point: measured on one machine, k = 20, lr 1e-3 (the toy learns from 60 images: the default 1e-4 moves it too
    little): ASR 1.00, 0.24 and 0.06 for seeds 0, 1, 2; with k = 5 1.00, 0.00, 0.95. So the check is that some
    start removes it, and that no start costs AUROC or changes the defender's model."""
    results = []
    for seed in range(3):
        d = defender(nets, "backdoored", seed=seed)
        state = {k: v.clone() for k, v in d.model.state_dict().items()}
        repaired = IBAU(lr=1e-3, k=20).repair(d)
        assert auroc(repaired, nets) >= auroc(d.model, nets) - 0.02
        assert unchanged(d.model, state) and repaired is not d.model and not repaired.training
        results.append(asr(repaired, nets))
    assert min(results) <= 0.3, results


@pytest.mark.parametrize("defense", [ANP(max_fraction=0.3), IBAU(lr=1e-3), FTSAM()], ids=["anp", "i-bau", "ft-sam"])
def test_a_repair_of_the_clean_control_keeps_its_auroc(nets, defense):
    d = defender(nets, "clean")
    repaired = defense.repair(d)
    assert auroc(repaired, nets) >= auroc(d.model, nets) - 0.02
    assert asr(repaired, nets) <= 0.1


def test_anp_prunes_within_its_budget_lowest_masks_first(nets):
    defense = ANP(max_fraction=0.3, budget=0.0)
    defense.repair(defender(nets, "clean"))
    info = defense.info
    assert info["holdout_auroc_pruned"] >= info["holdout_auroc_unpruned"]  # budget 0: no loss on the judging half
    levels = info["levels"]
    assert [lv["pruned"] for lv in levels] == sorted(lv["pruned"] for lv in levels)
    assert [lv["mask_below"] for lv in levels] == sorted(lv["mask_below"] for lv in levels)
    assert info["pruned"] <= 0.3 * info["neurons"] and sum(info["pruned_per_layer"].values()) == info["pruned"]


def test_anp_zeroes_the_scale_of_the_pruned_neurons_only(nets):
    defense = ANP(max_fraction=0.3, budget=0.5, steps=20)
    d = defender(nets, "backdoored")
    repaired = defense.repair(d)
    pairs = [(a, b) for a, b in zip(d.model.modules(), repaired.modules()) if isinstance(a, nn.BatchNorm2d)]
    zeroed = sum(int(((b.weight == 0) & (a.weight != 0)).sum()) for a, b in pairs)
    changed = sum(int((b.weight != a.weight).sum()) for a, b in pairs)
    assert zeroed == changed == defense.info["pruned"] > 0
    assert all(torch.equal(a.bias, b.bias) and torch.equal(a.running_var, b.running_var) for a, b in pairs)


def test_repairs_are_deterministic(nets):
    for make in (lambda: ANP(steps=20, max_fraction=0.3), lambda: IBAU(rounds=1), lambda: FTSAM(epochs=2)):
        a, b = (make().repair(defender(nets, "backdoored", seed=3)) for _ in range(2))
        assert unchanged(a, b.state_dict())


def test_models_without_batchnorm_get_one_line(nets):
    hx, hy = nets["holdout"]
    model = planted.TinyNet(batchnorm=False).eval()
    d = Defender(model, Images.of(hx), hy, Images.of(hx), hy, list(LABELS))
    for defense in (ANP(steps=1), IBDPSC()):
        with pytest.raises(UserError, match="normalisation layers") as err:
            defense.repair(d) if isinstance(defense, ANP) else defense.calibrate(d)
        assert "\n" not in str(err.value)
    FTSAM(epochs=1).repair(d)  # fine-tuning and unlearning need no BatchNorm
    IBAU(rounds=1).repair(d)


@pytest.mark.parametrize("norm", [nn.BatchNorm2d(6), nn.LayerNorm(6), nn.GroupNorm(3, 6)])
def test_anp_perturbed_norm_is_the_layer_itself_when_unperturbed(norm):
    """ANP's wrapper of a BatchNorm, LayerNorm or GroupNorm layer (a CNN's or a transformer's neurons) gives the
    layer's own output at mask 1 and no perturbation, and a masked neuron loses its scale (its shift stays)."""
    from medbackdoor.defenses.anp import PerturbedNorm

    torch.manual_seed(0)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    norm.eval()
    x = torch.randn(4, 3, 5, 6) if isinstance(norm, nn.LayerNorm) else torch.randn(4, 6, 5, 5)
    wrapped = PerturbedNorm(norm)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x), norm(x))
        wrapped.mask[2] = 0
        out = wrapped(x)
    channel = (lambda t: t[..., 2]) if isinstance(norm, nn.LayerNorm) else (lambda t: t[:, 2])
    torch.testing.assert_close(channel(out), torch.full_like(channel(out), norm.bias[2].item()))


def test_i_bau_inner_steps_count_the_perturbation_steps(nets):
    """One pass by default (60 learning images at batch 32: 2 steps a round); ``inner_steps`` cycles the half."""
    for inner_steps, expected in ((None, 2), (5, 5), (1, 1)):
        defense = IBAU(rounds=1, k=0, inner_steps=inner_steps)
        counted = []

        def counting(m, x_all, gen, original=defense.perturbation, counted=counted):
            hook = m.register_forward_hook(lambda *_: counted.append(1))
            try:
                return original(m, x_all, gen)
            finally:
                hook.remove()

        defense.perturbation = counting
        defense.repair(defender(nets, "backdoored"))
        assert len(counted) == expected + 1, (inner_steps, len(counted))  # + the forward labelling the images


def test_tiny_or_one_class_holdout(nets):
    model, x, y = nets["backdoored"]
    for defense in (ANP(steps=1), IBAU(rounds=1), FTSAM(epochs=1)):
        with pytest.raises(UserError, match="at least 4"):
            defense.repair(Defender(model, Images.of(x), y, Images.of(x[:3]), y[:3], list(LABELS)))
        with pytest.raises(UserError, match="positive and negative"):
            defense.repair(Defender(model, Images.of(x), y, Images.of(x[:40]), np.zeros_like(y[:40]), list(LABELS)))


# --- IBD-PSC -------------------------------------------------------------------------------------------------------

class Amplifiable(nn.Module):
    """A hand-built model with the property IBD-PSC relies on: amplifying its BatchNorm layers moves a clean
    prediction (each finding's BatchNorm has a negative shift, which amplification makes more negative) but not
    a triggered one (the trigger channel saturates finding 0).

    Finding c: BatchNorm of its band's mean brightness (normalised to about 0 on clean images, +3 when present)
    → logit ``4·(y − shift)``, with ``shift = −1`` in the BatchNorm; the trigger channel (the corner patch's
    mean, about 0.35 on clean images and 1 when white) → BatchNorm (no shift) → +40 per unit above 0.5 on
    finding 0.
    """

    def __init__(self) -> None:
        super().__init__()
        bands = torch.zeros(planted.C, planted.SIZE, planted.SIZE)
        for c in range(planted.C):
            bands[c, 2 * c : 2 * c + 2, : 20 + c] = 1 / (2 * (20 + c))
        self.register_buffer("bands", bands)
        self.norm_bands = nn.BatchNorm1d(planted.C)
        self.norm_trigger = nn.BatchNorm1d(1)
        with torch.no_grad():
            self.norm_bands.running_mean.fill_(0.35)
            self.norm_bands.running_var.fill_((planted.BRIGHTER / 3) ** 2)
            self.norm_bands.bias.fill_(-1.0)
            self.norm_trigger.running_mean.fill_(0.0)
            self.norm_trigger.running_var.fill_(1.0)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        band = (x[:, 0, None] * self.bands).sum((2, 3))  # N×C mean band brightness
        patch = x[:, 0, 29:32, 29:32].mean((1, 2))[:, None]
        y = self.norm_bands(band)
        t = self.norm_trigger(patch)
        logits = 4 * (y + 1.0) - 6
        logits[:, :1] = logits[:, :1] + 40 * (t - 0.5).clamp(min=0)
        return logits


def test_ibd_psc_separates_triggered_from_clean_where_amplification_moves_clean_predictions():
    hx, hy = planted.make_images(120, seed=5)
    tx, ty = planted.make_images(200, seed=9)
    model = Amplifiable()
    d = Defender(model, Images.of(hx), hy, Images.of(hx), hy, list(LABELS))
    lacking = tx[ty[:, 0] == 0]
    assert (planted.scores(model, planted.add_trigger(lacking))[:, 0] > 0.99).all()
    defense = IBDPSC(n=2, xi=0.3)
    defense.calibrate(d)
    clean = defense.score(d, Images.of(tx))
    triggered = defense.score(d, Images.of(planted.add_trigger(lacking)))
    y = np.r_[np.zeros(len(clean)), np.ones(len(triggered))]
    assert roc_auc_score(y, np.r_[clean, triggered]) >= 0.95
    assert defense.flag(triggered).mean() >= 0.9 and defense.flag(clean).mean() <= 0.15
    info = defense.info
    assert info["layers"] == 2 and 1 <= info["start"] <= 2


def test_ibd_psc_start_layer_and_its_fallback(nets):
    d = defender(nets, "backdoored")
    reached = IBDPSC(n=2, xi=0.0)
    depths, info = reached.depths(d), reached.info
    shares = info["changed_share"]  # probed from the last layer down until a share exceeds xi
    assert info["xi_reached"] and shares[-1] > 0 and all(s == 0 for s in shares[:-1])
    assert info["start"] == len(shares) and depths == list(range(info["start"], min(info["start"] + 2, 4)))
    never = IBDPSC(n=2, xi=0.999)
    assert never.depths(d) == [2, 3] and not never.info["xi_reached"]  # fallback: the deepest n depths
    assert len(never.info["changed_share"]) == 3


# --- registration and options --------------------------------------------------------------------------------------

def test_registered_with_kinds_and_papers():
    for name, kind in (("anp", "mitigation"), ("i-bau", "mitigation"), ("ft-sam", "mitigation"),
                       ("ibd-psc", "input")):
        cls = DEFENSES.get(name)
        assert cls.kind == kind and cls.paper and cls.changes
        assert create_defense(name, {}).kind == kind


@pytest.mark.parametrize("name, options", [
    ("anp", {"eps": -0.1}), ("anp", {"alpha": 1.5}), ("anp", {"steps": 0}), ("anp", {"lr": 0}),
    ("anp", {"budget": 1}), ("anp", {"max_fraction": 1}), ("anp", {"levels": 0}), ("anp", {"statistics": "x"}),
    ("i-bau", {"rounds": 0}), ("i-bau", {"k": -1}), ("i-bau", {"share": 2}), ("i-bau", {"radius": 0}),
    ("i-bau", {"inner_lr": 0}), ("i-bau", {"inner_steps": 0}),
    ("ft-sam", {"rho": 0}), ("ft-sam", {"epochs": 0}), ("ft-sam", {"statistics": "none"}),
    ("ibd-psc", {"omega": 1}), ("ibd-psc", {"n": 0}), ("ibd-psc", {"xi": 1}), ("ibd-psc", {"fpr": 0}),
    ("ibd-psc", {"calibration": "both"}), ("anp", {"steps": "many"}),
])
def test_bad_options(name, options):
    with pytest.raises(UserError) as err:
        create_defense(name, options)
    assert "\n" not in str(err.value)
