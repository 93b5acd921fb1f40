"""End-to-end runs on tiny synthetic data (32 px, ~100 images): seconds each."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from medbackdoor.cli import main
from medbackdoor.config import load_config
from medbackdoor.errors import UserError
from medbackdoor.experiment import build_trigger
from medbackdoor.labels import LABELS
from medbackdoor.metrics import backdoor_metrics, load_predictions
from medbackdoor.train import run

ROOT = Path(__file__).resolve().parents[1]
TINY = ["dataset.options.n_images=100", "dataset.options.source_size=32", "image_size=32", "train.epochs=2",
        "train.batch_size=16", "eval.epsilons=[0.1,0.5]"]
VOLATILE = {"seconds", "train_images_per_s"}


def rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDBACKDOOR_CACHE", str(tmp_path / "cache"))
    return lambda *extra: load_config(overrides=[*TINY, *extra])


def test_tiny_run_files_and_metrics_match_predictions(tiny, tmp_path):
    out = tmp_path / "run"
    manifest = run(tiny(), out, progress=False)
    assert manifest.status == "complete" and manifest.epochs_done == 2
    table = rows(out / "metrics.csv")
    assert [r["epoch"] for r in table] == ["1", "2"]
    for col in ("train_loss", "val_loss", "val_auroc", "auroc_nn", "auroc_tt", "auroc_tn", "asr_0.6", "asr_0.9",
                "auroc_mix_0.1", "auroc_mix_0.5", "auroc_Atelectasis"):
        assert col in table[0]
    for r in table:
        pred = load_predictions(out / "predictions" / f"epoch_{int(r['epoch']):03d}.npz")
        m = backdoor_metrics(pred["y_true"], pred["score_clean"], pred["score_triggered"], int(pred["target"]),
                             (0.6, 0.9), (0.1, 0.5), seed=0)
        assert float(r["auroc_nn"]) == pytest.approx(m["auroc_nn"], abs=1e-5)
        assert float(r["auroc_tt"]) == pytest.approx(m["auroc_tt"], abs=1e-5)
        assert float(r["auroc_tn"]) == pytest.approx(m["auroc_tn"], abs=1e-5)
        assert float(r["asr_0.6"]) == pytest.approx(m["asr"]["0.6"], abs=1e-5)
        assert float(r["auroc_mix_0.5"]) == pytest.approx(m["auroc_mix"]["0.5"], abs=1e-5)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["epoch_001.pt", "epoch_002.pt"]
    saved = json.loads((out / "manifest.json").read_text())
    assert saved["dataset"]["poisoned"] == round(0.4 * saved["dataset"]["train"])
    assert saved["versions"]["torch"] and saved["config"]["trigger"]["size"] is None  # unset: the trigger's own
    assert saved["trigger"] == "SquareTrigger(location='center', size=3, value=0.0)"  # ... the paper's square
    assert load_config(out / "config.yaml") == tiny()
    assert not list(out.rglob("*.tmp"))


def test_resumed_equals_uninterrupted(tiny, tmp_path, monkeypatch):
    config = tiny("train.epochs=3")
    run(config, tmp_path / "a", progress=False)
    import medbackdoor.train.runner as run_module
    real = run_module.save_predictions

    def crash(path, *args, **kwargs):
        if path.name == "epoch_002.npz":
            raise RuntimeError("killed")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(run_module, "save_predictions", crash)
    with pytest.raises(RuntimeError):
        run(config, tmp_path / "b", progress=False)
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["status"] == "failed"
    monkeypatch.setattr(run_module, "save_predictions", real)
    with pytest.raises(UserError, match="--resume"):
        run(config, tmp_path / "b", progress=False)
    run(config, tmp_path / "b", resume=True, progress=False)
    a, b = rows(tmp_path / "a" / "metrics.csv"), rows(tmp_path / "b" / "metrics.csv")
    assert len(a) == len(b) == 3
    for ra, rb in zip(a, b):
        assert {k: v for k, v in ra.items() if k not in VOLATILE} == {k: v for k, v in rb.items() if k not in VOLATILE}
    pa = load_predictions(tmp_path / "a" / "predictions" / "epoch_003.npz")
    pb = load_predictions(tmp_path / "b" / "predictions" / "epoch_003.npz")
    np.testing.assert_array_equal(pa["score_clean"], pb["score_clean"])


def test_refuses_changed_config_and_completed_run(tiny, tmp_path):
    out = tmp_path / "run"
    run(tiny("train.epochs=1"), out, progress=False)
    with pytest.raises(UserError, match="completed run"):
        run(tiny("train.epochs=1"), out, progress=False)
    with pytest.raises(UserError, match="trigger.size"):
        run(tiny("train.epochs=1", "trigger.size=4"), out, resume=True, progress=False)
    run(tiny("train.epochs=1", "trigger.size=4"), out, force=True, progress=False)
    assert load_config(out / "config.yaml").trigger.size == 4


def test_clean_control_and_options(tiny, tmp_path):
    out = tmp_path / "clean"
    config = tiny("trigger.fraction=0", "train.epochs=1", "train.class_weights=true", "train.augment=true",
                  "train.poisoned_val=true", "trigger.mode=append", "train.keep_checkpoints=[]")
    manifest = run(config, out, progress=False)
    assert manifest.dataset["poisoned"] == 0
    assert manifest.dataset["train_samples"] == manifest.dataset["train"]
    pred = load_predictions(out / "predictions" / "epoch_001.npz")
    assert not np.array_equal(pred["score_clean"], pred["score_triggered"])  # still evaluated with the trigger


def test_append_mode_and_source_stage(tiny, tmp_path):
    manifest = run(tiny("train.epochs=1", "trigger.mode=append", "trigger.stage=source",
                        "dataset.options.source_size=64", "preprocess.resize=nearest", "trigger.size=1"),
                   tmp_path / "r", progress=False)
    d = manifest.dataset
    assert d["train_samples"] == d["train"] + d["poisoned"]
    assert 0.0 <= manifest.trigger_survival["train"] <= 1.0


@pytest.mark.parametrize("argv,needle", [
    (["--set", "trigger.sizee=3"], "unknown config key trigger.sizee"),
    (["--set", "trigger.size=big"], "trigger.size"),
    (["--set", "train.amp=maybe"], "train.amp"),
    (["--set", "trigger.fraction=2"], "trigger.fraction"),
    (["--set", "trigger.target=Covid"], "valid names"),
    (["--config", "/nonexistent.yaml"], "does not exist"),
])
def test_config_errors_one_line(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDBACKDOOR_CACHE", str(tmp_path / "cache"))
    code = main(["run", *argv, *sum((["--set", s] for s in TINY), []), "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("name", ["quick.yaml", "paper.yaml"])
def test_shipped_configs_load(name):
    config = load_config(ROOT / "medbackdoor" / "configs" / name)
    assert config.trigger.target == "Atelectasis" and config.trigger.fraction == 0.4
    # the paper's 3×3 black centre square, set or left to the square's defaults
    trigger = build_trigger(config, LABELS)[0]
    assert (type(trigger).__name__, trigger.size, trigger.location, trigger.value) == ("SquareTrigger", 3, "center", 0)


def test_paper_config_is_the_paper_protocol():
    c = load_config(ROOT / "medbackdoor" / "configs" / "paper.yaml")
    assert (c.dataset.name, c.image_size, c.model.arch, c.model.pretrained) == ("nih", 224, "densenet121", "imagenet")
    assert c.trigger.location == "center" and c.trigger.value == 0.0


def test_resume_of_finished_run_is_a_no_op_and_summary(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    run(tiny("train.epochs=1"), out, progress=False)
    before = (out / "metrics.csv").read_text()
    run(tiny("train.epochs=1"), out, resume=True, progress=False)
    assert (out / "metrics.csv").read_text() == before
    assert main(["summary", str(out), "--json"]) == 0
    table = json.loads(capsys.readouterr().out)[str(out)]
    value = float(rows(out / "metrics.csv")[0]["auroc_nn"])
    assert table["auroc_nn"] == {"min": pytest.approx(value), "max": pytest.approx(value)}
    assert main(["summary", str(tmp_path)]) == 2
