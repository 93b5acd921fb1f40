"""A single-label run end to end on real pixels (``nih-sample-single``): softmax scores, cross-entropy training,
and its metric row recomputed here from the saved predictions by hand."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from conftest import image_cache_at

from medbackdoor.config import load_config
from medbackdoor.data import create_dataset
from medbackdoor.errors import UserError
from medbackdoor.labels import LABELS

TINY = ["dataset.name=nih-sample-single", "dataset.options.limit=16", "image_size=32", "train.epochs=1",
        "train.batch_size=16", "eval.epsilons=[0.1]"]


@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
    from medbackdoor.train import run

    folder = tmp_path_factory.mktemp("single")
    with image_cache_at(folder / "cache"):
        run(load_config("quick-real", TINY), folder / "run", progress=False)
        yield folder / "run"


def test_the_derived_task_keeps_the_images_with_one_finding_or_none():
    """Counted here from NIH's own label rows of the bundled file: no finding, or exactly one finding of the 7."""
    from medbackdoor.data.nih_sample import load_asset

    labels = load_asset()["labels"]
    n = labels.sum(1)
    classes = ["Infiltration", "Effusion", "Atelectasis", "Cardiomegaly", "Emphysema", "Pneumothorax", "Nodule"]
    expected = [int((n == 0).sum())] + [int(((n == 1) & (labels[:, LABELS.index(c)] == 1)).sum()) for c in classes]
    ds = create_dataset("nih-sample-single")
    assert ds.label_names == ("No Finding", *classes) and ds.task.kind == "multiclass"
    assert ds.labels.sum(0).astype(int).tolist() == expected
    assert (ds.labels.sum(1) == 1).all()
    binary = create_dataset("nih-sample-single", task="binary")
    assert binary.labels.sum(0).astype(int).tolist() == [int((n == 0).sum()), int((n > 0).sum())]
    assert len(set(ds.patients[ds.splits == "test"]) & set(ds.patients[ds.splits == "train"])) == 0


def test_a_single_label_run_writes_softmax_scores_and_its_metrics(single_run):
    with open(single_run / "metrics.csv") as f:
        row = list(csv.DictReader(f))[-1]
    assert {"accuracy", "balanced_accuracy", "auroc_macro", "asr", "racc"} <= set(row)
    assert not any(k.startswith("asr_") or k.startswith("auroc_tt") for k in row)
    z = np.load(next((single_run / "predictions").glob("*.npz")))
    assert str(z["task"]) == "multiclass"
    np.testing.assert_allclose(z["score_clean"].sum(1), 1.0, rtol=1e-5)  # a softmax per image
    y, t = z["y_true"].argmax(1), int(z["target"])
    clean, triggered = z["score_clean"].argmax(1), z["score_triggered"].argmax(1)
    assert float(row["accuracy"]) == pytest.approx((clean == y).mean())
    recalls = [(clean[y == c] == c).mean() for c in np.unique(y)]
    assert float(row["balanced_accuracy"]) == pytest.approx(np.mean(recalls))
    backdoor = y != t  # BackdoorBench's backdoor test set: the triggered images not of the target class
    assert float(row["asr"]) == pytest.approx((triggered[backdoor] == t).mean())
    assert float(row["racc"]) == pytest.approx((triggered[backdoor] == y[backdoor]).mean())
    assert np.isfinite(float(row["train_loss"])) and np.isfinite(float(row["val_loss"]))


def test_metrics_and_summary_read_a_single_label_run(single_run, capsys):
    import json

    from medbackdoor.cli import main

    last = sorted((single_run / "predictions").glob("*.npz"))[-1]
    z = np.load(last)
    y, t = z["y_true"].argmax(1), int(z["target"])
    triggered = z["score_triggered"].argmax(1)
    assert main(["metrics", str(last), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["task"] == "multiclass" and out["target"] == str(z["label_names"][t])
    assert out["asr"] == pytest.approx((triggered[y != t] == t).mean())
    assert out["accuracy"] == pytest.approx((z["score_clean"].argmax(1) == y).mean())
    assert main(["summary", str(single_run)]) == 0
    text = capsys.readouterr().out
    assert "BalAcc" in text and "R-Acc" in text and "AUROC-NN" not in text
    manifest = json.loads((single_run / "manifest.json").read_text())
    assert manifest["dataset"]["task"] == "multiclass" and manifest["dataset"]["channels"] == 1


def test_a_policy_the_task_has_not_is_one_line(tmp_path, monkeypatch):
    from medbackdoor.experiment import build_run_data

    monkeypatch.setenv("MEDBACKDOOR_CACHE", str(tmp_path / "cache"))
    config = load_config("quick-real", [*TINY, "trigger.label=add"])
    with pytest.raises(UserError, match="trigger.label must be one of onehot, all-to-all, keep for a multiclass"):
        build_run_data(config, workers=0, progress=False)


def test_all_to_all_poisons_class_y_as_the_next_one(tmp_path, monkeypatch):
    """Each poisoned training sample's one-hot row is its clean row moved one class on (y -> y + 1 mod C)."""
    from medbackdoor.experiment import build_run_data

    monkeypatch.setenv("MEDBACKDOOR_CACHE", str(tmp_path / "cache"))
    data = build_run_data(load_config("quick-real", [*TINY, "trigger.label=all-to-all", "trigger.mode=replace"]),
                          workers=0, progress=False)
    train = data.train
    clean = train.base.labels_array().argmax(1)
    trained = train.labels_array().argmax(1)
    poisoned = np.asarray(sorted(train.poisoned))
    assert len(poisoned) > 0
    others = np.setdiff1d(np.arange(len(clean)), poisoned)
    np.testing.assert_array_equal(trained[poisoned], (clean[poisoned] + 1) % 8)
    np.testing.assert_array_equal(trained[others], clean[others])


@pytest.fixture(scope="module")
def single_control(single_run):
    """The clean control of ``single_run`` (the same tiny config, ρ = 0), beside it."""
    from medbackdoor.train import run

    control = single_run.parent / "control"
    with image_cache_at(single_run.parent / "cache"):
        run(load_config("quick-real", [*TINY, "trigger.fraction=0"]), control, progress=False)
    return control


def test_explain_and_the_control_scoring_follow_the_task(single_run, single_control, tmp_path):
    """Grad-CAM of the softmax probability runs on a single-label run, and its clean control is scored on the
    run's trigger by argmax: the control's ASR recomputed here from its own softmax outputs."""
    import torch

    from medbackdoor.explain.run_explain import explain_run
    from medbackdoor.run import Run
    from medbackdoor.study.controls import control_response

    result = explain_run(Run(single_run), layers=("last",), images=4, score="probability")
    assert result["images"] > 0 and len(result["rows"]) > 0
    control = single_control
    got = control_response(Run(single_run), Run(control))
    assert {"asr", "racc", "accuracy"} <= set(got) and "auroc_tt" not in got
    test = Run(single_run).test
    model = Run(control).model(None, "cpu")
    with torch.no_grad():
        x = torch.from_numpy(np.asarray(test.triggered[: len(test.rows)])).float()[:, None] / 255.0
        predicted = torch.softmax(model(x), 1).argmax(1).numpy()
    y, t = test.labels.argmax(1), Run(single_run).target
    assert got["asr"] == pytest.approx((predicted[y != t] == t).mean())


def test_the_report_and_scorecard_of_a_single_label_sweep(single_run, single_control, tmp_path):
    """A sweep folder holding the run and its control, the control scored on the run's trigger and one defense:
    the report builds, and the scorecard row carries the run's argmax ASR and the control's, from their files."""
    import json

    import pandas as pd

    from medbackdoor.defenses.runner import defend
    from medbackdoor.report.build import build_report
    from medbackdoor.study.controls import score_control

    sweep = tmp_path / "sweep"
    (sweep / "runs").mkdir(parents=True)
    for folder in (single_run, single_control):
        (sweep / "runs" / folder.name).symlink_to(folder, target_is_directory=True)
    with image_cache_at(single_run.parent / "cache"):
        assert score_control(str(single_run), str(single_control), 1)["status"] == "complete"
        defend(single_run, "spectral", holdout=16)
    build_report(sweep)
    row = pd.read_csv(sweep / "report" / "scorecard.csv").set_index("defense").loc["spectral"]
    with open(single_run / "metrics.csv") as f:
        last = list(csv.DictReader(f))[-1]
    control = json.loads((single_run / "control.json").read_text())
    assert row["asr"] == pytest.approx(float(last["asr"]))
    assert row["asr_clean_model"] == pytest.approx(control["asr"])
    assert bool(row["implanted"]) == (float(last["asr"]) - control["asr"] >= 0.5)
    assert "ASR of the clean control" in (sweep / "report" / "report.md").read_text()
