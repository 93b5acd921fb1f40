"""The defense tables of the report, from hand-made rows: calibrated flags, the attack × defense summary, DER."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medbackdoor.report.defenses import defense_tables, der


def test_der_by_hand():
    # ASR 0.9 → 0.1 over a control's 0.2: the excess 0.7 → 0; AUROC-NN 0.80 → 0.78
    assert der(0.9, 0.1, 0.80, 0.78, control_asr=0.2) == pytest.approx((0.7 - 0.02 + 1) / 2)
    assert der(0.5, 0.5, 0.8, 0.8) == pytest.approx(0.5)  # nothing changed
    assert der(0.3, 0.9, 0.8, 0.9) == pytest.approx(0.5)  # neither drop counts when it is a rise
    assert der(0.15, 0.05, 0.8, 0.8, control_asr=0.2) == pytest.approx(0.5)  # no excess to remove


def _row(defense, kind, condition, seed, auroc, recall=np.nan, fpr=np.nan, nominal=np.nan, **extra):
    return {"run": f"{condition}-{seed}", "seed": seed, "condition": condition, "clean_control": condition == "Clean",
            "asr_metric": "asr_0.6", "asr_label": "ASR(p=0.6)", "control_asr": 0.0 if condition == "Clean" else 0.2,
            "defense": defense, "method": defense, "kind": kind, "seconds": 1.0, "ms_per_image": 1.0,
            "auroc": auroc, "tpr_at_1pct_fpr": np.nan, "tpr_at_5pct_fpr": 0.5, "precision": np.nan, "recall": recall,
            "realised_fpr": fpr, "nominal_fpr": nominal, **extra}


def _frame():
    rows = []
    for seed in (0, 1):
        rows += [_row("spectre", "data", "square", seed, 0.99, recall=0.9, fpr=0.02, nominal=0.01),
                 _row("spectre", "data", "adaptive", seed, 0.6, recall=0.1, fpr=0.03, nominal=0.01),
                 _row("spectre", "data", "Clean", seed, np.nan, fpr=0.01 + 0.02 * seed, nominal=0.01),
                 _row("strip", "input", "square", seed, 0.9, recall=0.7, fpr=0.06, nominal=0.05),
                 _row("strip", "input", "adaptive", seed, 0.7 + 0.05 * seed, recall=0.3, fpr=0.04, nominal=0.05),
                 _row("fine-pruning", "mitigation", "square", seed, np.nan, **{
                     "before_asr_0.6": 1.0, "after_asr_0.6": 0.2 + 0.2 * seed, "before_auroc_nn": 0.8,
                     "after_auroc_nn": 0.7})]
    return pd.DataFrame(rows)


def test_calibrated_best_failures_and_der_tables():
    tables = {name: table for name, _, table in defense_tables(_frame())}
    cal = tables["defenses_calibrated"]
    assert cal.loc["spectre (0.01)", "Clean"] == "0.020"  # the clean control: its realised FPR only, mean of 0.01, 0.03
    assert cal.loc["spectre (0.01)", "square"] == "0.900 / 0.020"
    assert cal.loc["strip (0.05)", "adaptive"] == "0.300 / 0.040"
    assert cal.loc["strip (0.05)", "Clean"] == "–"  # no strip row on the clean control: a dash, not "nan"
    best = tables["defenses_best"]
    assert best.loc["square", "best data defense"] == "spectre (0.990)"
    assert best.loc["adaptive", "best input defense"] == "strip (0.725)"
    assert best.loc["adaptive", "beats every detection defense"] == "yes"  # 0.6 and 0.725 < 0.8
    assert best.loc["square", "beats every detection defense"] == "no"
    fails = tables["defenses_failures"]
    assert fails.loc["spectre", "which"] == "adaptive" and fails.loc["strip", "attacks failed"] == "1/2"
    # DER per seed: excess 0.8 → 0 (after 0.2) and 0.8 → 0.2 (after 0.4), NN drop 0.1
    d0, d1 = (0.8 - 0.1 + 1) / 2, (0.6 - 0.1 + 1) / 2
    assert tables["defenses_der"].loc["fine-pruning", "square"] == \
        f"{np.mean([d0, d1]):.3f} ± {np.std([d0, d1], ddof=1):.3f}"
    # repaired: mean excess after (0.0 and 0.2 → 0.1) at most 0.10, but the NN drop 0.1 is over 0.02
    assert tables["defenses_repaired"].loc["fine-pruning", "square"] == "no (0.100, +0.100)"


def test_a_run_without_a_clean_control_has_no_der_rather_than_a_zero_control():
    """With no scored clean control the excess ASR is unknown: DER and the repair target say so. (Read as 0, a
    repair from 1.0 to 0.25 with no AUROC drop would count as DER 0.875 and not repaired.)"""
    assert np.isnan(der(1.0, 0.25, 0.8, 0.8, control_asr=float("nan")))
    rows = [_row("anp", "mitigation", "square", seed, np.nan, **{
        "before_asr_0.6": 1.0, "after_asr_0.6": 0.25, "before_auroc_nn": 0.8, "after_auroc_nn": 0.8})
        for seed in (0, 1)]
    rows[1]["control_asr"] = np.nan
    tables = {name: t for name, _, t in defense_tables(pd.DataFrame(rows))}
    assert tables["defenses_der"].loc["anp", "square"] == "– (no clean control)"
    assert tables["defenses_repaired"].loc["anp", "square"] == "– (no clean control)"
    rows[1]["control_asr"] = 0.2  # with it: excess 0.8 → 0.05 at no AUROC cost, on both seeds
    tables = {name: t for name, _, t in defense_tables(pd.DataFrame(rows))}
    assert tables["defenses_der"].loc["anp", "square"] == f"{(0.75 + 1) / 2:.3f} ± 0.000"
    assert tables["defenses_repaired"].loc["anp", "square"] == "yes (0.050, +0.000)"


def test_the_repair_target_counts_the_excess_asr_and_the_auroc_drop():
    rows = [_row("anp", "mitigation", "square", seed, np.nan, **{
        "before_asr_0.6": 1.0, "after_asr_0.6": after, "before_auroc_nn": 0.8, "after_auroc_nn": 0.8 - drop})
        for seed, after, drop in ((0, 0.25, 0.01), (1, 0.35, 0.03))]  # control 0.2: excess 0.05 and 0.15
    table = {name: t for name, _, t in defense_tables(pd.DataFrame(rows))}["defenses_repaired"]
    assert table.loc["anp", "square"] == "yes (0.100, +0.020)"
    rows[1]["after_auroc_nn"] = 0.8 - 0.04
    table = {name: t for name, _, t in defense_tables(pd.DataFrame(rows))}["defenses_repaired"]
    assert table.loc["anp", "square"].startswith("no")


@pytest.mark.slow
def test_sweep_retrains_the_clean_control_without_as_many_random_samples(tmp_path, monkeypatch):
    """The random-drop control drops as many samples as the cleanse dropped *clean* ones (its flagged samples that
    were not poisoned, counted here from its scores.csv)."""
    import csv
    import json

    from medbackdoor.defenses.summary import read_summary
    from medbackdoor.report.build import build_report
    from medbackdoor.rundir import RunDir
    from medbackdoor.study.controls import random_drop_positions
    from medbackdoor.study.sweep import run_sweep

    monkeypatch.setenv("MEDBACKDOOR_CACHE", str(tmp_path / "cache"))
    sweep = tmp_path / "s.yaml"
    sweep.write_text("base_config: quick\ngrid:\n  - trigger.fraction: [0.0, 0.4]\n    train.seed: [0]\n"
                     "defenses:\n  - {method: spectral, retrain: true}\n")
    overrides = ["dataset.options.n_images=120", "dataset.options.source_size=32", "image_size=32", "train.epochs=1",
                 "train.batch_size=16", "eval.epsilons=[0.1]"]
    results = run_sweep(sweep, tmp_path / "out", overrides=overrides, progress=False)
    status = {r["name"]: r["status"] for r in results}
    errors = {r["name"]: r.get("error") for r in results}
    assert status["fraction-0.4_seed-0:spectral:retrain-control"] == "complete", errors
    run, control = RunDir(tmp_path / "out" / "runs" / "fraction-0.4_seed-0"), \
        RunDir(tmp_path / "out" / "runs" / "fraction-0.0_seed-0")
    rows = list(csv.DictReader(open(run.defense_scores_path("spectral"))))
    dropped = sum(r["flagged"] == "True" and r["poisoned"] == "False" for r in rows)
    scored = json.loads(run.retrain_control_path("spectral").read_text())
    assert scored["dropped"] == dropped and scored["control"] == "retrain"
    assert scored["cleanse_dropped"] == read_summary(run.defense_summary_path("spectral")).retrain["dropped"] \
        == sum(r["flagged"] == "True" for r in rows)
    retrained = control.random_drop_dir(dropped)
    n = control.manifest().dataset["train_samples"]
    assert retrained.manifest().poisoning["dropped"] == min(dropped, n)
    assert retrained.manifest().dataset["train_samples"] == n - min(dropped, n)
    lines = [line for line in (retrained.path.parent / "drop.txt").read_text().splitlines() if not line.startswith("#")]
    assert [int(x) for x in lines] == random_drop_positions(n, dropped, 0).tolist()
    assert len(set(lines)) == len(lines)
    from medbackdoor.study.figure1 import figure1_runs

    # the steps' results (controls, defenses, retrain controls) are not runs: the Figure-1 pair is found among runs
    assert figure1_runs(results) == [run.path, control.path]
    build_report(tmp_path / "out")
    table = (tmp_path / "out" / "report" / "defenses_retrain.csv").read_text()
    assert "control retrained without as many random samples" in table


def test_the_random_drop_control_counts_the_clean_samples_a_cleanse_dropped(tmp_path):
    """Flagged and not poisoned, counted by hand on a scores.csv written here: cross samples are clean too."""
    from medbackdoor.rundir import RunDir
    from medbackdoor.study.controls import clean_dropped

    path = RunDir(tmp_path).defense_scores_path("spectral")
    path.parent.mkdir(parents=True)
    path.write_text("sample,score,flagged,poisoned,cross\n0,1.0,True,True,False\n1,0.9,True,False,False\n"
                    "2,0.8,True,False,True\n3,0.1,False,False,False\n4,0.7,False,True,False\n")
    assert clean_dropped(tmp_path, "spectral") == 2
