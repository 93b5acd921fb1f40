"""Grad-CAM on a model built so the answer is known, and the invariants of every method."""

import numpy as np
import pytest
import torch
from torch import nn

from medbackdoor.errors import UserError
from medbackdoor.explain import CAMS, grad_cam
from medbackdoor.models import create_model


class Quadrants(nn.Module):
    """Feature 0 sees only the top-left quadrant of the image, feature 1 only the bottom-right."""

    def forward(self, x):
        h, w = x.shape[-2:]
        mask = torch.zeros(2, h, w)
        mask[0, : h // 2, : w // 2] = 1
        mask[1, h // 2 :, w // 2 :] = 1
        return x * mask


class QuadrantNet(nn.Module):
    """Class 0 is the mean of feature 0 (top-left), class 1 of feature 1 (bottom-right): the answer is known."""

    def __init__(self):
        super().__init__()
        self.features = Quadrants()
        self.relu = nn.ReLU(inplace=False)
        self.after = nn.ReLU(inplace=True)  # in place after the hooked layer: must not corrupt the maps
        self.scale = nn.Parameter(torch.ones(2))

    def forward(self, x):
        a = self.after(self.relu(self.features(x)))
        return a.mean((2, 3)) * self.scale


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    return torch.from_numpy(rng.random((5, 1, 16, 16)).astype(np.float32))


@pytest.mark.parametrize("method", CAMS.names())
def test_known_answer_quadrant(method, images):
    model = QuadrantNet()
    maps = grad_cam(model, images, 0, layer="relu", method=method)
    for m in maps:
        peak = np.unravel_index(int(m.argmax()), m.shape)
        assert peak[0] < 8 and peak[1] < 8
        assert m[10:, 10:].max() < 0.05  # nothing where class 0 cannot see
    maps = grad_cam(model, images, 1, layer="relu", method=method)
    assert all(np.unravel_index(int(m.argmax()), m.shape) >= (8, 8) for m in maps)


@pytest.mark.parametrize("method", CAMS.names())
def test_invariants_on_densenet(method):
    torch.manual_seed(0)
    model = create_model()
    x = torch.rand(4, 1, 32, 32)
    before = x.clone()
    hooks_before = sum(len(m._forward_hooks) for m in model.modules())
    for layer in ("last", "middle"):
        maps = grad_cam(model, x, "Atelectasis", layer=layer, method=method)
        assert maps.shape == (4, 32, 32) and maps.min() >= 0 and maps.max() <= 1
        one_by_one = torch.cat([grad_cam(model, x[i : i + 1], "Atelectasis", layer=layer, method=method)
                                for i in range(4)])
        torch.testing.assert_close(maps, one_by_one, atol=1e-4, rtol=1e-4)
    assert torch.equal(x, before)
    assert sum(len(m._forward_hooks) for m in model.modules()) == hooks_before
    assert all(p.grad is None for p in model.parameters())


def test_per_image_targets_honoured():
    model = QuadrantNet()
    x = torch.rand(2, 1, 16, 16)
    maps = grad_cam(model, x, torch.tensor([0, 1]), layer="relu")
    assert np.unravel_index(int(maps[0].argmax()), (16, 16)) < (8, 8)
    assert np.unravel_index(int(maps[1].argmax()), (16, 16)) >= (8, 8)
    same = grad_cam(model, x, ["Atelectasis", "Cardiomegaly"], layer="relu")
    torch.testing.assert_close(maps, same)


def test_uint8_input_and_errors():
    model = QuadrantNet()
    x = torch.randint(0, 255, (3, 16, 16), dtype=torch.uint8)
    assert grad_cam(model, x, 0, layer="relu").shape == (3, 16, 16)
    with pytest.raises(UserError, match="no layer"):
        grad_cam(model, x, 0, layer="nope")
    with pytest.raises(UserError, match="targets"):
        grad_cam(model, x, [0, 1], layer="relu")
    with pytest.raises(UserError):
        grad_cam(model, x, 0, layer="relu", score="softmax")


def test_probability_score_saturates_to_zero():
    model = QuadrantNet()
    x = torch.ones(1, 1, 16, 16) * 1e4  # absurdly confident
    logit_map = grad_cam(model, x, 0, layer="relu")
    prob_map = grad_cam(model, x, 0, layer="relu", score="probability")
    assert logit_map.max() == 1.0 and prob_map.max() == 0.0


class InPlaceAfterHook(nn.Module):
    """torchvision-style: an in-place op right after the hooked layer changes the tensor the hook saw."""

    def __init__(self):
        super().__init__()
        self.features = Quadrants()
        self.scale = nn.Parameter(torch.ones(2))

    def forward(self, x):
        a = self.features(x)
        a = torch.relu_(a.sub_(0.25))
        return a.mean((2, 3)) * self.scale


def test_in_place_op_after_hooked_layer_does_not_corrupt():
    x = torch.rand(3, 1, 16, 16)
    maps = grad_cam(InPlaceAfterHook(), x, 0, layer="features")
    expected = x[:, 0].clone()
    expected[:, 8:, :] = 0
    expected[:, :, 8:] = 0
    expected = expected / expected.flatten(1).amax(1)[:, None, None]
    torch.testing.assert_close(maps, expected, atol=1e-5, rtol=1e-5)


def test_localisation_measures():
    from medbackdoor.explain.localise import (
        box_masks,
        concentration,
        detection_scores,
        mass_in_box,
        pointing_game,
        top_mass,
        trigger_boxes,
    )
    clean = np.full((2, 10, 10), 100, np.uint8)
    trig = clean.copy()
    trig[0, 2:4, 5:8] = 0  # image 1: the trigger changed nothing
    boxes = trigger_boxes(clean, trig)
    assert boxes.tolist() == [[2, 5, 4, 8], [-1, -1, -1, -1]]
    masks = box_masks(boxes, (10, 10), dilate=1)
    assert masks[0].sum() == 4 * 5 and masks[1].sum() == 0
    maps = np.zeros((2, 10, 10))
    maps[0, 3, 6] = 3.0
    maps[0, 9, 9] = 1.0
    assert mass_in_box(maps[:1], masks[:1])[0] == pytest.approx(0.75)
    assert pointing_game(maps[:1], masks[:1])[0] == 1.0
    assert np.isnan(mass_in_box(maps[1:], masks[1:])[0])
    flat, spot = np.ones((1, 10, 10)), np.zeros((1, 10, 10))
    spot[0, 0, 0] = 1
    assert concentration(flat)[0] == pytest.approx(0.0) and concentration(spot)[0] == pytest.approx(1.0)
    assert top_mass(spot)[0] == 1.0 and top_mass(flat)[0] == pytest.approx(0.01)
    perfect = detection_scores(np.zeros(20), np.ones(20))
    assert perfect == {"auroc": 1.0, "tpr_at_fpr": 1.0}
    chance = detection_scores(np.arange(20.0), np.arange(20.0))
    assert chance["auroc"] == pytest.approx(0.5) and chance["tpr_at_fpr"] <= 0.1


def test_explain_command_on_a_tiny_run(tmp_path, monkeypatch, capsys):
    from medbackdoor.cli import main
    from medbackdoor.config import load_config
    from medbackdoor.train import run

    monkeypatch.setenv("MEDBACKDOOR_CACHE", str(tmp_path / "cache"))
    config = load_config(overrides=["dataset.options.n_images=100", "dataset.options.source_size=32", "image_size=32",
                                    "train.epochs=2", "train.batch_size=16"])
    run(config, tmp_path / "run", progress=False)
    assert main(["explain", str(tmp_path / "run"), "--images", "8", "--layers", "last", "middle"]) == 0
    out = tmp_path / "run" / "explain"
    import csv
    rows = list(csv.DictReader(open(out / "localisation.csv")))
    keys = {(r["epoch"], r["layer"], r["version"], r["quantity"]) for r in rows}
    assert ("2", "middle", "infected", "mass_in_box") in keys
    assert ("1", "last", "clean_vs_infected", "detector_auroc_top1pct_mass") in keys
    assert (out / "figure1.png").stat().st_size > 0 and (out / "figure1.pdf").stat().st_size > 0
    assert main(["explain", str(tmp_path / "run"), "--epochs", "7"]) == 2
    assert "available" in capsys.readouterr().err
    assert main(["explain", str(tmp_path / "run"), "--images", "4", "--target", "predicted", "--epochs", "2",
                 "--method", "gradcam++"]) == 0
