"""Sweeps and reports on a tiny synthetic study (32 px, 1 epoch per run)."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from medbackdoor.cli import main
from medbackdoor.config import load_config
from medbackdoor.report.build import build_report
from medbackdoor.study.sweep import expand_grid, load_sweep, run_name, run_state, run_sweep

TINY_BASE = {"dataset": {"options": {"n_images": 80, "source_size": 32}}, "image_size": 32,
             "train": {"epochs": 2, "batch_size": 16}, "eval": {"epsilons": [0.1, 0.5]}}
GRID = [{"trigger.size": [2, 3], "train.seed": [0, 1]},
        {"trigger.fraction": [0.0], "train.seed": [0, 1]},
        {"trigger.location": ["random"], "train.seed": [0, 1]},
        {"trigger.size": [40], "train.seed": [0]}]  # larger than the image: fails at run time


def test_expand_grid_union_dedup_and_seed_override():
    points = expand_grid([{"a": [1, 2], "train.seed": [0, 1]}, {"a": [1], "train.seed": [0]}])
    assert len(points) == 4
    assert len(expand_grid({"a": [1, 2], "train.seed": [0, 1]}, seeds=[5])) == 2
    assert run_name({"trigger.size": 3, "train.seed": 0}) == "size-3_seed-0"
    assert run_name({"a.size": 1, "b.size": 2}) == "a-size-1_b-size-2"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    spec = root / "sweep.yaml"
    base = {**TINY_BASE, "cache_dir": str(root / "cache")}
    spec.write_text(yaml.safe_dump({"name": "tiny", "base": base, "grid": GRID, "cuts": "everything"},
                                   sort_keys=False))
    results = run_sweep(spec, root / "out", jobs=2, progress=False)
    return spec, root / "out", results


def test_sweep_records_failure_and_goes_on(study):
    _, out, results = study
    status = {r["name"]: r["status"] for r in results}
    assert status["size-40_seed-0"] == "failed"
    assert sum(s == "complete" for n, s in status.items() if ":" not in n) == 8
    assert sum(s == "complete" for n, s in status.items() if n.endswith(":control")) == 6
    manifest = json.loads((out / "runs" / "size-40_seed-0" / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "larger than" in manifest["error"]


def test_sweep_skips_complete_and_resumes_partial(study):
    spec, out, _ = study
    folder = out / "runs" / "size-2_seed-1"
    metrics = (folder / "metrics.csv").read_text().splitlines()
    (folder / "metrics.csv").write_text("\n".join(metrics[:-1]) + "\n")  # as if killed during epoch 2
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["status"] = "running"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert run_state(folder).startswith("partial")
    dry = run_sweep(spec, out, dry_run=True)
    assert {r["name"]: r["state"] for r in dry}["size-2_seed-1"].startswith("partial")
    results = {r["name"]: r["status"] for r in run_sweep(spec, out, jobs=1, progress=False)}
    assert results["size-2_seed-1"] == "complete"
    assert results["size-3_seed-0"] == "skipped (complete)"
    assert len((folder / "metrics.csv").read_text().splitlines()) == 3


def _independent(out: Path, runs: list[str], metric: str, stat: str) -> tuple[float, float]:
    values = []
    for name in runs:
        with open(out / "runs" / name / "metrics.csv") as f:
            col = [float(r[metric]) for r in csv.DictReader(f)]
        values.append(min(col) if stat == "min" else max(col))
    return float(np.mean(values)), float(np.std(values, ddof=1))


def test_report_matches_independent_aggregation(study):
    _, out, _ = study
    path = build_report(out, "everything")
    report = path.read_text()
    assert "Table 1" in report and "everything" in report and "size-40_seed-0 is failed" in report
    t1 = list(csv.reader(open(out / "report" / "table1.csv")))
    header, rows = t1[0], {r[0]: r[1:] for r in t1[1:]}
    assert header[1:] == ["Clean", "2x2 px", "3x3 px"]
    for label, metric in (("AUROC-NN", "auroc_nn"), ("ASR(p=0.6)", "asr_0.6"), ("AUROC-TN", "auroc_tn")):
        mean, std = _independent(out, ["size-3_seed-0", "size-3_seed-1"], metric, "max")
        assert rows[label][2] == f"{mean:.3f} ± {std:.3f}"
        mean, std = _independent(out, ["fraction-0.0_seed-0", "fraction-0.0_seed-1"], metric, "max")
        assert rows[label][0] == f"{mean:.3f} ± {std:.3f}"
    t2 = list(csv.reader(open(out / "report" / "table2.csv")))
    mean, std = _independent(out, ["location-random_seed-0", "location-random_seed-1"], "auroc_tt", "min")
    assert dict((r[0], r[1:]) for r in t2[1:])["AUROC-TT"][2] == f"{mean:.3f} ± {std:.3f}"
    t3 = list(csv.reader(open(out / "report" / "table3.csv")))
    mean, std = _independent(out, ["size-3_seed-0", "size-3_seed-1"], "auroc_mix_0.5", "max")
    assert t3[0][1:] == ["0.1", "0.5"]
    assert dict((r[0], r[1:]) for r in t3[1:])["Maximum"][1] == f"{mean:.3f} ± {std:.3f}"
    for name in ("figure3.png", "figure3.pdf", "table1.tex", "table1_min.md", "table2.md", "table3.tex"):
        assert (out / "report" / name).stat().st_size > 0


def test_report_cli_and_skipped_tables(study, tmp_path, capsys):
    _, out, _ = study
    partial = tmp_path / "partial"
    (partial / "runs").mkdir(parents=True)
    import shutil
    shutil.copytree(out / "runs" / "size-3_seed-0", partial / "runs" / "size-3_seed-0")
    assert main(["report", str(partial)]) == 0
    text = (partial / "report" / "report.md").read_text()
    assert "Skipped" in text and "0.5" in text  # table 2 skipped, table 3 present
    assert main(["report", str(tmp_path / "nothing")]) == 2


def test_builtin_protocols_expand():
    _, quick = load_sweep("quick")
    assert len(quick) == 20 and {r.name for r in quick} >= {"size-1_seed-0", "fraction-0.0_seed-2"}
    figure = {r.name: r for r in quick if r.folder.startswith("figure1/")}  # 18 grid runs + the Figure-1 pair
    assert set(figure) == {"figure1/trigger", "figure1/clean"}
    assert figure["figure1/trigger"].data["image_size"] == 128 and len([r for r in quick if r.name not in figure]) == 18
    _, paper = load_sweep("paper", overrides=["dataset.root=/data/nih"])
    assert len(paper) == 24 and paper[0].data["dataset"]["root"] == "/data/nih"


@pytest.mark.parametrize("protocol", ["quick", "attacks", "defenses", "defenses-tune"])
def test_shipped_sweeps_load_and_every_defense_entry_constructs(protocol):
    """A typo in a candidate's options fails here, not hours into a sweep."""
    spec, runs = load_sweep(protocol)
    assert runs and spec["defenses"] if protocol.startswith("defenses") else runs


def test_bad_sweep_files(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"grid": {"trigger.size": 3}}))
    assert main(["sweep", str(bad), "--out", str(tmp_path / "o"), "--dry-run"]) == 2
    bad.write_text(yaml.safe_dump({"grid": {"trigger.sise": [3]}}))
    assert main(["sweep", str(bad), "--out", str(tmp_path / "o"), "--dry-run"]) == 2
    assert "trigger.sise" in capsys.readouterr().err


def test_sweep_and_reproduce_exit_non_zero_when_a_run_failed(study, capsys):
    spec, out, _ = study
    assert main(["sweep", str(spec), "--out", str(out)]) == 1  # the failed point is retried and fails again
    err = capsys.readouterr().err
    assert "1 of 9 runs failed" in err and "size-40_seed-0" in err
    assert str(out / "runs" / "size-40_seed-0" / "manifest.json") in err
    assert main(["sweep", str(spec), "--out", str(out), "--dry-run"]) == 0


@pytest.mark.slow
def test_figure1_pair_is_trained_apart_explained_and_kept_out_of_the_tables(tmp_path, monkeypatch):
    from medbackdoor.study.figure1 import explain_figure_runs

    spec = tmp_path / "sweep.yaml"
    base = {**TINY_BASE, "cache_dir": str(tmp_path / "cache"), "train": {"epochs": 1, "batch_size": 16}}
    spec.write_text(yaml.safe_dump({"base": base, "grid": [{"trigger.size": [3], "train.seed": [0]}],
                                    "figure1": {"image_size": 64, "dataset.options.source_size": 64}},
                                   sort_keys=False))
    out = tmp_path / "out"
    dry = {r["name"]: r["state"] for r in run_sweep(spec, out, dry_run=True)}
    assert dry == {"size-3_seed-0": "new", "figure1/trigger": "new", "figure1/clean": "new"}
    results = run_sweep(spec, out, jobs=1, progress=False)
    assert all(r["status"] == "complete" for r in results)
    assert not any(r["name"].endswith(":control") for r in results)  # the pair is not scored for the tables
    clean = load_config(out / "figure1" / "clean" / "config.yaml")
    trigger = load_config(out / "figure1" / "trigger" / "config.yaml")
    assert clean.image_size == trigger.image_size == 64 and clean.trigger.fraction == 0.0
    assert trigger.trigger.fraction == 0.4 and trigger.train.seed == 0
    explain_figure_runs(results)
    assert (out / "figure1" / "trigger" / "explain" / "figure1.png").is_file()
    assert not (out / "runs" / "size-3_seed-0" / "explain").exists()  # the pair replaces the grid's runs
    report = build_report(out).read_text()
    assert "figure1/trigger/explain/figure1.png" in report and "| figure1/clean |" in report
    with open(out / "report" / "runs.csv") as f:
        assert {r["run"] for r in csv.DictReader(f)} == {"size-3_seed-0"}


def test_each_poisoned_run_is_scored_on_its_clean_control(study):
    """The sweep wrote RUN/control.json for every poisoned run: the control's response to its own trigger (3x3
    centre, the default) equals what the control's run recorded; the report tables run − control; a sweep run
    again scores nothing again."""
    spec, out, _ = study
    names = {"size-2_seed-0", "size-2_seed-1", "size-3_seed-0", "size-3_seed-1", "location-random_seed-0",
             "location-random_seed-1"}
    assert {p.parent.name for p in (out / "runs").glob("*/control.json")} == names
    report = build_report(out).read_text()
    assert "The trigger on the clean control" in report
    rows = {r["run"]: r for r in csv.DictReader(open(out / "report" / "controls_by_run.csv"))}
    assert set(rows) == names
    for name, row in rows.items():
        assert row["control"] == f"fraction-0.0_seed-{name[-1]}"
        own = list(csv.DictReader(open(out / "runs" / name / "metrics.csv")))[-1]
        assert float(row["excess_asr_0.6"]) == pytest.approx(float(own["asr_0.6"]) - float(row["control_asr_0.6"]))
        if name.startswith("size-3"):
            control = list(csv.DictReader(open(out / "runs" / row["control"] / "metrics.csv")))
            last = control[int(row["control_epoch"]) - 1]
            for p in ("0.6", "0.9"):
                assert float(row[f"control_asr_{p}"]) == pytest.approx(float(last[f"asr_{p}"]), abs=1e-9)
            assert float(row["control_auroc_tt"]) == pytest.approx(float(last["auroc_tt"]), abs=1e-6)
    again = {r["name"]: r["status"] for r in run_sweep(spec, out, jobs=1, progress=False)}
    assert {again[f"{n}:control"] for n in names} == {"skipped (complete)"}


def test_failures_are_counted_apart_for_runs_and_later_steps(tmp_path, capsys):
    from medbackdoor.cli.study_cmd import report_failures

    run = tmp_path / "runs" / "a"
    results = [{"name": "a", "folder": str(run), "status": "complete"},
               {"name": "b", "folder": str(tmp_path / "runs" / "b"), "status": "complete"},
               {"name": "a:control", "folder": str(run / "control.json"), "status": "failed", "error": "E1"},
               {"name": "a:strip", "folder": str(run / "defenses" / "strip"), "status": "failed", "error": "E2"},
               {"name": "a:spectre", "folder": str(run / "defenses" / "spectre"), "status": "complete"}]
    assert report_failures(tmp_path, results) == 1
    err = capsys.readouterr().err
    assert "runs failed" not in err and "2 of 3 defense and control steps failed" in err
    assert str(run / "control_failed.txt") in err and str(run / "defenses" / "strip" / "failed.txt") in err
    assert report_failures(tmp_path, results[:2]) == 0


def test_sweep_key_controls_must_be_a_bool(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({"base": TINY_BASE, "grid": [{"train.seed": [0]}], "controls": "maybe"}))
    assert main(["sweep", str(spec), "--out", str(tmp_path / "o"), "--dry-run"]) == 2
    spec.write_text(yaml.safe_dump({"base": TINY_BASE, "grid": [{"train.seed": [0]}], "controls": False}))
    assert main(["sweep", str(spec), "--out", str(tmp_path / "o"), "--dry-run"]) == 0


def test_figure1_runs_are_found_by_what_they_are_not_by_their_names(tmp_path):
    """Without a figure1 pair, Figure 1 explains the paper's 3×3 black centre model at the lowest seed (set
    explicitly or left at the square's defaults) and the clean control of its seed: folder names play no part."""
    from medbackdoor.rundir import RunDir
    from medbackdoor.study.figure1 import figure1_runs

    runs = {"a": ["trigger.size=2", "train.seed=0"], "b": ["train.seed=1"],
            "c": ["trigger.size=3", "trigger.location=center", "train.seed=0"], "d": ["trigger.fraction=0"],
            "e": ["trigger.fraction=0", "train.seed=1"], "f": ["trigger.location=random", "train.seed=0"],
            "g": ["trigger.kind=patch", "trigger.size=3", "train.seed=0"]}
    results = []
    for name, overrides in runs.items():
        RunDir(tmp_path / name).write_config(load_config(overrides=overrides))
        results.append({"name": f"run-{name}", "folder": str(tmp_path / name), "status": "complete"})
    assert figure1_runs(results) == [tmp_path / "c", tmp_path / "d"]
    assert figure1_runs([r for r in results if r["name"] != "run-c"]) == [tmp_path / "b", tmp_path / "e"]
    assert figure1_runs([r for r in results if r["name"] in ("run-a", "run-f", "run-g")]) == []
    failed = [{**r, "status": "failed"} if r["name"] == "run-d" else r for r in results]
    assert figure1_runs(failed) == [tmp_path / "c"]  # no complete control of seed 0: the model alone
