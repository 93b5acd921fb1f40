"""Anti-Backdoor Learning: its stages inside a run (``train.abl``) and ``defend RUN --method abl`` (a model trained
anew on the defender's pixels and labels alone)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import module_run

from medbackdoor.cli import main
from medbackdoor.config import AblConfig, load_config
from medbackdoor.errors import UserError
from medbackdoor.rundir import RunDir
from medbackdoor.train import run
from medbackdoor.train.abl import ascent_loss, isolate, lga_loss, sample_nll, stage

TINY = ["dataset.options.n_images=120", "dataset.options.source_size=32", "image_size=32", "train.epochs=2",
        "train.batch_size=16", "eval.epsilons=[0.1]", "trigger.mode=append", "trigger.fraction=0.2"]


def test_stages_follow_the_epochs():
    abl = AblConfig(enabled=True, isolation_epochs=1, unlearn_epochs=2)
    assert [stage(e, abl, 5) for e in range(1, 6)] == ["isolate", "train", "train", "unlearn", "unlearn"]
    assert [stage(e, AblConfig(unlearn_epochs=0), 3) for e in (1, 2, 3)] == ["isolate", "train", "train"]


def test_sample_loss_is_the_summed_bce_and_isolation_takes_the_lowest():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 4))
    labels = (rng.random((6, 4)) < 0.3).astype(np.float32)
    labels[2, 1] = np.nan  # unknown: left out
    p = 1 / (1 + np.exp(-logits))
    y = torch.from_numpy(np.nan_to_num(labels))
    per = F.binary_cross_entropy_with_logits(torch.from_numpy(logits), y.double(), reduction="none").numpy()
    per[2, 1] = 0
    np.testing.assert_allclose(sample_nll(p, labels), per.sum(1), rtol=1e-5)
    losses = np.array([3.0, 0.1, 2.0, 0.1, 5.0, 0.05, 1.0, 4.0, 2.5, 0.7])
    np.testing.assert_array_equal(isolate(losses, 0.25), [1, 3, 5])  # ceil(2.5) = 3 lowest, ties by position
    assert len(isolate(losses, 0.001)) == 1


def test_lga_pushes_a_batch_below_gamma_back_up():
    y = torch.zeros(4, 3)
    learned = torch.full((4, 3), -8.0, requires_grad=True)  # summed BCE ≈ 3·e^-8: far below γ
    lga_loss(0.5)(learned, y).backward()
    assert (learned.grad < 0).all()  # descending this loss raises the logits: the loss goes back up
    fresh = torch.zeros(4, 3, requires_grad=True)  # summed BCE 3·log 2 ≈ 2.08 > γ: ordinary descent
    lga_loss(0.5)(fresh, y).backward()
    assert (fresh.grad > 0).all()
    up = torch.zeros(4, 3, requires_grad=True)
    ascent_loss(up, y).backward()
    assert (up.grad < 0).all()


def test_single_label_abl_uses_the_cross_entropy_of_the_class():
    from medbackdoor.task import task_of

    task = task_of("multiclass", ("a", "b", "c"))
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]])
    labels = np.array([[1, 0, 0], [0, 1, 0], [np.nan] * 3], np.float32)
    losses = sample_nll(p, labels, task)
    assert losses[0] == pytest.approx(-math.log(0.7)) and losses[1] == pytest.approx(-math.log(0.1))
    assert losses[2] == math.inf  # an unknown class is never isolated
    y = torch.tensor([[1.0, 0.0, 0.0]] * 4)
    learned = torch.tensor([[4.0, -4.0, -4.0]] * 4, requires_grad=True)  # cross-entropy ≈ 2·e^-8: below γ
    lga_loss(0.5, task)(learned, y).backward()
    assert (learned.grad[:, 0] > 0).all()  # descending it lowers the true logit: the loss goes back up
    fresh = torch.zeros(4, 3, requires_grad=True)  # log 3 ≈ 1.10 > γ: ordinary descent raises the true logit
    lga_loss(0.5, task)(fresh, y).backward()
    assert (fresh.grad[:, 0] < 0).all()
    up = torch.zeros(4, 3, requires_grad=True)
    ascent_loss(up, y, task=task).backward()
    assert (up.grad[:, 0] > 0).all()  # ascent lowers the true class's logit


@pytest.mark.parametrize("override, message", [
    ("train.abl.isolation_ratio=0", "isolation_ratio"),
    ("train.abl.unlearn_lr=0", "unlearn_lr"),
    ("train.abl.isolation_epochs=2", "no training epoch"),
    ("train.abl.unlearn_epochs=-1", "unlearn_epochs"),
    ("train.abl.colour=red", "unknown config key train.abl.colour"),
])
def test_bad_abl_settings_are_one_line(override, message):
    with pytest.raises(UserError, match=message) as err:
        load_config(overrides=TINY + ["train.abl.enabled=true", override])
    assert "\n" not in str(err.value)


@pytest.fixture(scope="module")
def abl_run(tmp_path_factory):
    yield from module_run(tmp_path_factory, "abl", TINY)


@pytest.mark.slow
def test_defend_abl_trains_a_model_anew_and_scores_its_isolation(abl_run, capsys):
    assert main(["defend", str(abl_run), "--method", "abl", "--set", "unlearn_epochs=1",
                 "--set", "isolation_ratio=0.1"]) == 0
    out = abl_run / "defenses" / "abl"
    summary = json.loads((out / "summary.json").read_text())
    n = json.loads((abl_run / "manifest.json").read_text())["dataset"]["train_samples"]
    det, cross = summary["detection"], summary["cross_samples"]
    assert len(summary["flagged_positions"]) == math.ceil(0.1 * n) == summary["info"]["isolated"]
    assert det["n"] + cross["n"] == n and det["flagged"] + cross["flagged"] == math.ceil(0.1 * n)
    assert det["positives"] > 0 and summary["info"]["poisoned_isolated"] <= summary["info"]["isolated"]
    assert summary["kind"] == "mitigation" and set(summary["before"]) == set(summary["after"])
    assert summary["before"] != summary["after"]
    # asked again: the summary is reused
    mtime = (out / "summary.json").stat().st_mtime_ns
    assert main(["defend", str(abl_run), "--method", "abl", "--set", "unlearn_epochs=1",
                 "--set", "isolation_ratio=0.1"]) == 0
    assert (out / "summary.json").stat().st_mtime_ns == mtime


def test_defend_abl_needs_a_training_epoch(abl_run, tmp_path, capsys):
    assert main(["defend", str(abl_run), "--method", "abl", "--set", "isolation_epochs=2"]) == 2
    assert "no training epoch" in capsys.readouterr().err


@pytest.mark.slow
def test_an_abl_run_resumed_after_a_crash_equals_one_never_stopped(abl_run, tmp_path, monkeypatch):
    import medbackdoor.train.runner as runner

    config = load_config(overrides=TINY + ["train.abl.enabled=true", "train.abl.unlearn_epochs=1",
                                           "train.epochs=3", "train.abl.isolation_ratio=0.1"])
    run(config, tmp_path / "whole", progress=False)
    real = runner._epoch

    def crash(t, epoch):
        if epoch == 3:
            raise KeyboardInterrupt
        real(t, epoch)

    monkeypatch.setattr(runner, "_epoch", crash)
    with pytest.raises(KeyboardInterrupt):
        run(config, tmp_path / "stopped", progress=False)
    monkeypatch.setattr(runner, "_epoch", real)
    run(config, tmp_path / "stopped", resume=True, progress=False)
    a, b = RunDir(tmp_path / "whole"), RunDir(tmp_path / "stopped")
    assert a.abl_isolated_path.read_text() == b.abl_isolated_path.read_text()
    whole, stopped = a.load_state(3)["model"], b.load_state(3)["model"]  # each checkpoint read once
    for k, v in whole.items():
        assert torch.equal(v, stopped[k]), k


def test_abl_trains_on_the_defenders_pixels_alone():
    """ABL needs nothing but a Defender's pixels, labels, training recipe and a fresh model: on planted data (a
    white corner patch on 10% of the images, labelled finding 0 only) its isolation finds the patched images far
    above chance, the same way twice (every draw is seeded by the defender's seed)."""
    from planted import TinyNet, add_trigger, make_images

    from medbackdoor.config import TrainConfig
    from medbackdoor.defenses.abl import ABL
    from medbackdoor.defenses.base import Defender, Images

    torch.set_num_threads(1)
    x, y = make_images(240, seed=1)
    poisoned = np.zeros(len(x), bool)
    poisoned[::10] = True
    x[poisoned] = add_trigger(x[poisoned])
    y[poisoned] = 0
    y[poisoned, 0] = 1
    hx, hy = make_images(40, seed=2)
    recipe = TrainConfig(epochs=3, batch_size=24, lr=1e-3, amp=False)
    answers = []
    for _ in range(2):
        d = Defender(TinyNet(), Images(x), y, Images(hx), hy, [f"f{i}" for i in range(14)], seed=5,
                     training=recipe, new_model=TinyNet)
        model, losses, isolated = ABL(isolation_ratio=0.1, unlearn_epochs=1).train(d)
        answers.append(isolated)
        assert len(losses) == len(x) and len(isolated) == math.ceil(0.1 * len(x))
    np.testing.assert_array_equal(answers[0], answers[1])
    precision = poisoned[answers[0]].mean()
    assert precision >= 0.5, precision  # chance: 0.1
