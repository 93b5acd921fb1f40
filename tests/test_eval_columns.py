"""The metric columns follow the run's ``eval`` settings everywhere: a run measured at ``eval.thresholds: [0.5]``
with ``eval.strict: true`` reports ASR as ``asr_0.5`` (scores strictly above 0.5) in ``metrics.csv``, in a
mitigation's before/after, in cleanse-and-retrain, in ``defend``'s printout and in the report. Every value is
checked against a count written out here over the saved (or recomputed) scores."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from medbackdoor.cli.main import main
from medbackdoor.config import load_config
from medbackdoor.train import run

TINY = ["dataset.options.n_images=96", "dataset.options.source_size=32", "image_size=32", "train.epochs=1",
        "train.batch_size=16", "eval.epsilons=[0.1]", "trigger.mode=append", "eval.thresholds=[0.5]",
        "eval.strict=true"]


def _asr_by_hand(y: np.ndarray, triggered: np.ndarray, target: int, p: float = 0.5) -> float:
    """Strict ASR: among triggered test images whose true label lacks the target, the share scoring above p."""
    lacking = y[:, target] == 0
    return float((triggered[lacking, target] > p).sum() / lacking.sum())


def _saved_asr(folder, epoch: int = 1) -> float:
    with np.load(folder / "predictions" / f"epoch_{epoch:03d}.npz") as z:
        return _asr_by_hand(z["y_true"], z["score_triggered"], int(z["target"]))


def _asr_columns(row: dict) -> set[str]:
    return {k for k in row if k.startswith("asr_")}


@pytest.fixture(scope="module")
def strict_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("strict")
    mp = pytest.MonkeyPatch()
    mp.setenv("MEDBACKDOOR_CACHE", str(folder / "cache"))
    try:
        run(load_config(overrides=TINY), folder / "run", progress=False)
        yield folder / "run"
    finally:
        mp.undo()


def test_metrics_csv_has_the_runs_columns(strict_run):
    (row,) = csv.DictReader(open(strict_run / "metrics.csv"))
    assert _asr_columns(row) == {"asr_0.5"}
    assert float(row["asr_0.5"]) == pytest.approx(_saved_asr(strict_run), abs=5e-6)  # 6 significant digits


def test_a_mitigation_reports_the_runs_columns(strict_run, capsys, tmp_path):
    from medbackdoor.defenses.child import load_defender
    from medbackdoor.defenses.runner import _materials, create_defense, defend
    from medbackdoor.inference import predict
    from medbackdoor.run import Run

    assert main(["defend", str(strict_run), "--method", "fine-pruning", "--holdout", "16"]) == 0
    out = capsys.readouterr().out
    assert "ASR(p>0.5)" in out and "ASR(0.6)" not in out
    summary = defend(strict_run, "fine-pruning", holdout=16)  # reused
    before, after = summary.before, summary.after
    assert _asr_columns(before) == _asr_columns(after) == {"asr_0.5"}
    assert before["asr_0.5"] == _saved_asr(strict_run)
    # the mitigated model, built again the same way (the same materials, the same defender seed), scored here
    run = Run(strict_run)
    materials = _materials(run, tmp_path / "materials", 1, 16, 0, with_test=False)
    defender = load_defender(tmp_path / "materials", {"device": "cpu", "batch_size": run.config.eval.batch_size,
                                                      "seed": materials.seed, "label_names": list(run.label_names)})
    data = run.data
    repaired = create_defense("fine-pruning", {}).repair(defender)
    triggered = predict(repaired, np.asarray(data.test.triggered), defender.device, 64)
    assert after["asr_0.5"] == _asr_by_hand(np.asarray(data.test.labels), triggered, data.target)
    rows = list(csv.DictReader(open(strict_run / "defenses" / "fine-pruning" / "scores.csv")))
    assert [_asr_columns(r) for r in rows] == [{"asr_0.5"}] * 2


def test_cleanse_and_retrain_reports_the_runs_columns(strict_run, capsys):
    """On main this ended in ``KeyError: 'asr_0.6'``."""
    assert main(["defend", str(strict_run), "--method", "spectral", "--retrain", "--holdout", "16"]) == 0
    assert "ASR(p>0.5)" in capsys.readouterr().out
    summary = json.loads((strict_run / "defenses" / "spectral" / "summary.json").read_text())
    result = summary["retrain"]
    assert _asr_columns(result["before"]) == _asr_columns(result["after"]) == {"asr_0.5"}
    assert result["before"]["asr_0.5"] == pytest.approx(_saved_asr(strict_run), abs=5e-6)
    retrained = strict_run / "defenses" / "spectral" / "retrain"
    assert result["after"]["asr_0.5"] == pytest.approx(_saved_asr(retrained), abs=5e-6)


def test_the_report_tables_the_runs_columns(strict_run, tmp_path):
    from medbackdoor.defenses.runner import defend
    from medbackdoor.report.build import build_report

    summary = defend(strict_run, "fine-pruning", holdout=16)
    shutil.copytree(strict_run, tmp_path / "runs" / "strict", ignore=shutil.ignore_patterns("retrain"))
    report = build_report(tmp_path).read_text()
    table = {r[""]: r for r in csv.DictReader(open(tmp_path / "report" / "table1.csv"))}
    assert "ASR(p>0.5)" in table and not any(k.startswith("ASR(p=") for k in table)
    (cell,) = [v for k, v in table["ASR(p>0.5)"].items() if k]
    assert cell == f"{_saved_asr(strict_run):.3f} ± –"
    mitigation = open(tmp_path / "report" / "defenses_mitigation.csv").read()
    assert f"ASR(p>0.5) {summary.before['asr_0.5']:.3f} → {summary.after['asr_0.5']:.3f}" in mitigation
    assert "ASR(p>0.5)" in report
