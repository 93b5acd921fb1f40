"""Anti-Backdoor Learning: its stages inside a run (``train.abl``) and ``defend RUN --method abl``."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import image_cache_at

from medbackdoor.cli import main
from medbackdoor.config import AblConfig, load_config
from medbackdoor.errors import UserError
from medbackdoor.rundir import RunDir
from medbackdoor.train import run
from medbackdoor.train.abl import ISOLATED, LOSSES, ascent_loss, isolate, lga_loss, sample_nll, stage

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
    folder = tmp_path_factory.mktemp("abl")
    with image_cache_at(folder / "cache"):
        run(load_config(overrides=TINY), folder / "run", progress=False)
        yield folder / "run"


def test_defend_abl_trains_the_run_again_and_scores_its_isolation(abl_run, capsys):
    assert main(["defend", str(abl_run), "--method", "abl", "--set", "unlearn_epochs=1",
                 "--set", "isolation_ratio=0.1"]) == 0
    out = abl_run / "defenses" / "abl"
    summary = json.loads((out / "summary.json").read_text())
    trained = RunDir(out / "run")
    config = trained.config()
    assert config.train.abl.enabled and config.train.epochs == 3 and config.train.abl.unlearn_epochs == 1
    assert [int(r["epoch"]) for r in trained.metrics()] == [1, 2, 3]
    n = len(np.load(out / "run" / LOSSES, allow_pickle=False))
    isolated = [int(line) for line in (out / "run" / ISOLATED).read_text().splitlines() if not line.startswith("#")]
    assert len(isolated) == math.ceil(0.1 * n) == summary["info"]["isolated"]
    det = summary["detection"]
    assert det["n"] == n and det["flagged"] == len(isolated) and det["positives"] > 0
    assert summary["kind"] == "mitigation" and set(summary["before"]) == set(summary["after"])
    assert summary["before"] != summary["after"]
    # asked again: the summary (and the trained run) are reused
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
    assert (tmp_path / "whole" / ISOLATED).read_text() == (tmp_path / "stopped" / ISOLATED).read_text()
    whole, stopped = a.load_state(3)["model"], b.load_state(3)["model"]  # each checkpoint read once
    for k, v in whole.items():
        assert torch.equal(v, stopped[k]), k


def test_abl_isolation_does_not_read_the_truth(abl_run, tmp_path):
    """The run's attack record (which samples were poisoned) scores ABL and nothing else: with its ``poisoned``
    flags permuted, ABL isolates the same samples and trains the same model; only the scored precision moves."""
    import shutil

    scrambled = tmp_path / "run"
    shutil.copytree(abl_run, scrambled, ignore=shutil.ignore_patterns("defenses"))
    with np.load(scrambled / "attack.npz", allow_pickle=False) as f:
        record = {k: f[k] for k in f.files}
    truth = record["poisoned"].astype(bool)
    record["poisoned"] = np.roll(truth, 7)
    assert (record["poisoned"] != truth).any()
    np.savez(scrambled / "attack.npz", **record)
    args = ["--method", "abl", "--set", "unlearn_epochs=1", "--set", "isolation_ratio=0.1"]
    with image_cache_at(abl_run.parent / "cache"):
        assert main(["defend", str(abl_run), *args]) == 0
        assert main(["defend", str(scrambled), *args]) == 0
    a, b = abl_run / "defenses" / "abl", scrambled / "defenses" / "abl"
    assert (a / "run" / ISOLATED).read_text() == (b / "run" / ISOLATED).read_text()
    assert np.array_equal(np.load(a / "run" / LOSSES), np.load(b / "run" / LOSSES))
    last = RunDir(a / "run").checkpoint_epochs()[-1]
    real, scrambled_model = RunDir(a / "run").load_state(last)["model"], RunDir(b / "run").load_state(last)["model"]
    for k, v in real.items():
        assert torch.equal(v, scrambled_model[k]), k
    sa, sb = (json.loads((x / "summary.json").read_text())["detection"] for x in (a, b))
    assert sa["flagged"] == sb["flagged"] and sa != sb
