"""The defense framework: the defender-knowledge rule, label-audit, scoring, `medbackdoor defend`, the study."""

from __future__ import annotations

import ast
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import medbackdoor.defenses as defenses_pkg
from medbackdoor.cli.main import main
from medbackdoor.config import load_config
from medbackdoor.defenses import DEFENSES, Defender, Images
from medbackdoor.defenses.label_audit import LabelAudit, vector_keys
from medbackdoor.defenses.scoring import detection_summary, tpr_at_fpr
from medbackdoor.errors import UserError
from medbackdoor.labels import LABELS
from medbackdoor.train import run

TINY = ["dataset.options.n_images=120", "dataset.options.source_size=32", "image_size=32", "train.epochs=1",
        "train.batch_size=16", "eval.epsilons=[0.1]", "trigger.mode=append"]


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.head = nn.Linear(4, 14)

    def forward_features(self, x):
        return self.relu(self.conv(x))

    def forward(self, x):
        return self.head(self.forward_features(x).mean((2, 3)))


def _defender(train_labels, holdout_labels, n_img=None):
    rng = np.random.default_rng(0)
    n, h = len(train_labels), len(holdout_labels)
    return Defender(Tiny(), Images.of(rng.integers(0, 255, (n, 16, 16), dtype=np.uint8)), train_labels,
                    Images.of(rng.integers(0, 255, (h, 16, 16), dtype=np.uint8)), holdout_labels, list(LABELS))


# --- the rule: a defense sees the Defender only ----------------------------------------------------------------------

def test_the_defender_holds_no_truth():
    d = _defender(np.zeros((5, 14)), np.zeros((4, 14)))
    names = set(vars(d)) | {n for n in dir(d) if not n.startswith("__")}
    for forbidden in ("poisoned", "trigger", "target", "truth", "order", "config"):
        assert not any(forbidden in n for n in names), forbidden
    assert not hasattr(d.train_images, "dataset") and not hasattr(d.train_images, "__dict__")
    with pytest.raises(AttributeError):
        d.train_images.poisoned  # noqa: B018 - a view of pixels, nothing else


def test_no_defense_module_reaches_for_the_truth():
    """Static check of every module in medbackdoor/defenses except the runner (which scores) and scoring."""
    folder = Path(defenses_pkg.__file__).parent
    forbidden_attrs = {"poisoned", "poisoned_mask", "order", "trigger", "target", "triggered", "survived",
                       "carriers", "truth"}
    for path in folder.glob("*.py"):
        if path.name in ("runner.py", "scoring.py", "base.py", "__init__.py"):
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            own = isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self"
            if isinstance(node, ast.Attribute) and node.attr in forbidden_attrs and not own:  # an option is fine
                raise AssertionError(f"{path.name}:{node.lineno} reads .{node.attr}")
            if isinstance(node, ast.ImportFrom) and node.module and any(
                    m in node.module for m in ("medbackdoor.train", "medbackdoor.poison", "medbackdoor.rundir")):
                raise AssertionError(f"{path.name}:{node.lineno} imports {node.module}")


def test_a_defense_that_touches_the_truth_fails(tmp_path, monkeypatch):
    """A cheating defense gets no truth through the Defender: the attribute does not exist."""
    @DEFENSES.register("cheat-test")
    class Cheat(LabelAudit):
        def suspicion(self, d):
            return d.poisoned  # noqa: B018

    try:
        with pytest.raises(AttributeError):
            Cheat().suspicion(_defender(np.zeros((5, 14)), np.zeros((4, 14))))
    finally:
        DEFENSES._items.pop("cheat-test")


# --- scoring ----------------------------------------------------------------------------------------------------------

def test_detection_summary_matches_hand_counts():
    y = np.array([0, 0, 0, 0, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.9, 0.8, 0.95])
    out = detection_summary(y, s, s > 0.5)
    assert out["auroc"] == pytest.approx(7 / 8)
    assert out["precision"] == pytest.approx(2 / 3) and out["recall"] == 1.0
    assert out["false_positive_rate"] == pytest.approx(1 / 4)
    assert tpr_at_fpr(y, s, 0.0) == 0.5  # 0.95 above every negative; 0.8 is below 0.9
    assert np.isnan(detection_summary(np.zeros(3), np.ones(3))["auroc"])


# --- label-audit ------------------------------------------------------------------------------------------------------

def _labels(rng, n, prevalence=0.15):
    return (rng.random((n, 14)) < prevalence).astype(np.float32)


def test_label_audit_finds_an_over_represented_one_hot_vector():
    rng = np.random.default_rng(1)
    clean, hold = _labels(rng, 400), _labels(rng, 300)
    onehot = np.zeros((80, 14), np.float32)
    onehot[:, 0] = 1
    d = _defender(np.concatenate([clean, onehot]), hold)
    det = LabelAudit().suspicion(d)
    truth = np.r_[np.zeros(400, bool), np.ones(80, bool)]
    s = detection_summary(truth, det.scores, det.flagged)
    assert s["auroc"] > 0.95 and s["recall"] == 1.0
    assert [v["findings"] for v in det.info["flagged_vectors"]] == ["Atelectasis"]
    assert det.columns["label_vector"][-1] == "1" + "0" * 13


def test_label_audit_on_clean_labels_flags_nothing_and_checks_options():
    rng = np.random.default_rng(2)
    det = LabelAudit().suspicion(_defender(_labels(rng, 500), _labels(rng, 400)))
    assert det.flagged.mean() < 0.02
    with pytest.raises(UserError):
        LabelAudit(reference="elsewhere")
    with pytest.raises(UserError):
        LabelAudit(alpha=2)
    assert vector_keys(np.array([[1, 0, np.nan]])).tolist() == ["10?"]


def test_label_audit_nih_reference_uses_the_shipped_joint_statistics():
    rng = np.random.default_rng(3)
    d = _defender(_labels(rng, 200, 0.05), _labels(rng, 10))
    det = LabelAudit(reference="nih").suspicion(d)
    assert len(det.scores) == 200 and np.isfinite(det.scores).all()


# --- medbackdoor defend on a real (tiny) run --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("defend")
    import os

    old = os.environ.get("MEDBACKDOOR_CACHE")
    os.environ["MEDBACKDOOR_CACHE"] = str(folder / "cache")
    try:
        run(load_config(overrides=TINY), folder / "run", progress=False)
        yield folder / "run"
    finally:
        if old is None:
            os.environ.pop("MEDBACKDOOR_CACHE", None)
        else:
            os.environ["MEDBACKDOOR_CACHE"] = old


def test_defend_writes_scores_and_summary_and_reuses_them(tiny_run, capsys, monkeypatch):
    monkeypatch.setenv("MEDBACKDOOR_CACHE", str(tiny_run.parent / "cache"))
    assert main(["defend", str(tiny_run), "--method", "label-audit", "--holdout", "20"]) == 0
    assert "detection AUROC" in capsys.readouterr().out
    out = tiny_run / "defenses" / "label-audit"
    rows = list(csv.DictReader(open(out / "scores.csv")))
    manifest = json.loads((tiny_run / "manifest.json").read_text())
    assert len(rows) == manifest["dataset"]["train_samples"]
    assert [r["poisoned"] for r in rows].count("True") == manifest["dataset"]["poisoned"]
    assert rows[-1]["poisoned"] == "True" and rows[0]["sample"] == "0"  # appended copies after the originals
    summary = json.loads((out / "summary.json").read_text())
    assert summary["holdout"] == min(20, manifest["dataset"]["val"]) and summary["detection"]["auroc"] > 0.9
    assert (out / "roc.png").is_file()
    mtime = (out / "summary.json").stat().st_mtime_ns
    assert main(["defend", str(tiny_run), "--method", "label-audit", "--holdout", "20"]) == 0
    assert (out / "summary.json").stat().st_mtime_ns == mtime  # reused


@pytest.mark.parametrize("args, message", [
    (["--method", "nope"], "unknown defense 'nope'"),
    (["--method", "label-audit", "--set", "alpha=7"], "alpha"),
    (["--method", "label-audit", "--set", "colour=red"], "colour"),
    (["--method", "label-audit", "--epoch", "9"], "no checkpoint for epoch 9"),
    (["--method", "label-audit", "--holdout", "1"], "--holdout"),
])
def test_defend_bad_input_is_one_line(tiny_run, args, message, capsys, monkeypatch):
    monkeypatch.setenv("MEDBACKDOOR_CACHE", str(tiny_run.parent / "cache"))
    assert main(["defend", str(tiny_run), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_defend_a_folder_that_is_no_run(tmp_path, capsys):
    assert main(["defend", str(tmp_path), "--method", "label-audit"]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_dropping_samples_leaves_them_out_everywhere(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDBACKDOOR_CACHE", str(tiny_run.parent / "cache"))
    from medbackdoor.train.data import build_run_data

    config = load_config(tiny_run / "config.yaml")
    full = build_run_data(config, progress=False).train
    poisoned = np.flatnonzero(full.poisoned_mask())
    drop = tmp_path / "drop.txt"
    drop.write_text("# flagged\n" + "\n".join(map(str, poisoned[:5])) + "\n3\n")
    kept = build_run_data(load_config(tiny_run / "config.yaml", [f"train.drop={drop}"]), progress=False).train
    assert len(kept) == len(full) - 6
    assert kept.poisoned_mask().sum() == len(poisoned) - 5
    assert np.array_equal(kept.labels_array(), np.delete(full.labels_array(), [*poisoned[:5], 3], axis=0))
    assert np.array_equal(kept[3]["image"], full[4]["image"])
    drop.write_text("x\n")
    with pytest.raises(UserError, match="line 1"):
        build_run_data(load_config(tiny_run / "config.yaml", [f"train.drop={drop}"]), progress=False)


def test_sweep_runs_listed_defenses_and_the_report_tables_them(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDBACKDOOR_CACHE", str(tmp_path / "cache"))
    from medbackdoor.study.report import build_report
    from medbackdoor.study.sweep import run_sweep

    base = {k: v for k, v in (t.split("=") for t in TINY)}
    sweep = tmp_path / "s.yaml"
    sweep.write_text(
        "base_config: quick\nbase:\n" + "".join(f"  {k}: {v}\n" for k, v in ()) +
        "grid:\n  - trigger.fraction: [0.0, 0.4]\n    train.seed: [0]\n"
        "defenses:\n  - label-audit\n  - {method: label-audit, name: audit-nih, options: {reference: nih}}\n")
    overrides = [f"{k}={v}" for k, v in base.items()] + ["train.epochs=1"]
    results = run_sweep(sweep, tmp_path / "out", overrides=overrides, progress=False)
    statuses = {r["name"]: r["status"] for r in results}
    assert statuses["fraction-0.4_seed-0:audit-nih"] == "complete"
    assert len([n for n in statuses if ":" in n and not n.endswith(":control")]) == 4
    assert statuses["fraction-0.4_seed-0:control"] == "complete"
    report = build_report(tmp_path / "out").read_text()
    assert "## Defenses" in report and "audit-nih" in report
    table = list(csv.DictReader(open(tmp_path / "out" / "report" / "defenses_auroc.csv")))
    assert {r[""] for r in table} == {"label-audit", "audit-nih"}
    bad = tmp_path / "bad.yaml"
    bad.write_text("base_config: quick\ngrid:\n  - train.seed: [0]\ndefenses:\n  - {method: label-audit, x: 1}\n")
    with pytest.raises(UserError, match="bad defenses entry"):
        run_sweep(bad, tmp_path / "o2", dry_run=True)


def test_defender_features_are_the_pooled_penultimate_layer():
    d = _defender(np.zeros((6, 14)), np.zeros((3, 14)))
    f = d.train_features
    x = torch.from_numpy(np.asarray(d.train_images[0:6])).float().div(255).unsqueeze(1)
    assert f.shape == (6, 4)
    np.testing.assert_allclose(f, d.model.forward_features(x).mean((2, 3)).detach().numpy(), rtol=1e-5)
    assert d.train_features is f  # cached
