"""The report never merges conditions: every table cell is one condition, labelled by what varies."""

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from medbackdoor.config import dump_config, load_config
from medbackdoor.errors import UserError
from medbackdoor.report.aggregate import condition_table, read_runs, runs_table
from medbackdoor.report.build import build_report, describe, lookup
from medbackdoor.study.sweep import run_sweep

TINY_BASE = {"dataset": {"options": {"n_images": 80, "source_size": 32}}, "image_size": 32,
             "train": {"epochs": 1, "batch_size": 16}, "eval": {"epsilons": [0.1]}}
ROWS = (("ASR(p=0.6)", "asr_0.6"), ("ASR(p=0.9)", "asr_0.9"), ("AUROC-TT", "auroc_tt"), ("AUROC-NN", "auroc_nn"),
        ("AUROC-TN", "auroc_tn"))
METRICS = ("asr_0.6", "asr_0.9", "auroc_tt", "auroc_nn", "auroc_tn", "auroc_mix_0.1")


def _read_table(path: Path) -> tuple[list[str], dict[str, list[str]]]:
    """A report CSV as (column labels, {row label: cells})."""
    with open(path, newline="") as f:
        table = list(csv.reader(f))
    return table[0][1:], {row[0]: row[1:] for row in table[1:]}


def _expected_cell(values: list[float]) -> str:
    """Mean ± sample std over seeds, printed as the report prints it."""
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3f} ± –"
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"


def _run_extreme(folder: Path, metric: str, stat: str) -> float | None:
    """Min or max over the epochs of one run's ``metrics.csv`` (non-finite values ignored)."""
    with open(folder / "metrics.csv", newline="") as f:
        col = [float(r[metric]) for r in csv.DictReader(f) if r[metric] not in ("", "nan")]
    col = [v for v in col if math.isfinite(v)]
    if not col:
        return None
    return min(col) if stat == "min" else max(col)


def _expected(folders: list[Path], metric: str, stat: str) -> str:
    values = [_run_extreme(f, metric, stat) for f in folders]
    return _expected_cell([v for v in values if v is not None])


@pytest.mark.slow
def test_fraction_by_size_sweep_table1_every_cell(tmp_path):
    spec = tmp_path / "sweep.yaml"
    base = {**TINY_BASE, "cache_dir": str(tmp_path / "cache")}
    grid = {"trigger.fraction": [0.0, 0.2, 0.5], "trigger.size": [2, 3], "train.seed": [0, 1]}
    spec.write_text(yaml.safe_dump({"name": "rho", "base": base, "grid": grid}, sort_keys=False))
    out = tmp_path / "out"
    results = run_sweep(spec, out, jobs=2, progress=False)
    assert [r["status"] for r in results if ":" not in r["name"]] == ["complete"] * 12
    controls = [r for r in results if r["name"].endswith(":control")]
    assert len(controls) == 8 and all(r["status"] == "complete" for r in controls)  # each poisoned run
    report = build_report(out).read_text()

    by_condition: dict[tuple[float, int], list[Path]] = {}
    for folder in sorted((out / "runs").iterdir()):
        config = yaml.safe_load((folder / "config.yaml").read_text())
        key = (float(config["trigger"]["fraction"]), int(config["trigger"]["size"]))
        by_condition.setdefault(key, []).append(folder)
    assert all(len(folders) == 2 for folders in by_condition.values()) and len(by_condition) == 6

    def label(fraction: float, size: int) -> str:
        return f"Clean ({size}x{size} px)" if fraction == 0 else f"{size}x{size} px, ρ={fraction}"

    header, rows = _read_table(out / "report" / "table1.csv")
    assert header == ["Clean (2x2 px)", "Clean (3x3 px)", "2x2 px, ρ=0.2", "2x2 px, ρ=0.5", "3x3 px, ρ=0.2",
                      "3x3 px, ρ=0.5"]
    assert list(rows) == [name for name, _ in ROWS]
    for (fraction, size), folders in by_condition.items():
        column = header.index(label(fraction, size))
        for name, metric in ROWS:
            assert rows[name][column] == _expected(folders, metric, "max"), (fraction, size, name)
    assert "| run | seed | trigger.fraction | trigger.size | status |" in report
    with open(out / "report" / "conditions.csv", newline="") as f:
        conditions = list(csv.DictReader(f))
    assert {"trigger.fraction", "trigger.size"} <= set(conditions[0])
    assert len({c["condition"] for c in conditions}) == 6


def _fake_run(root: Path, name: str, overrides: list[str], epochs: list[list[float]]) -> Path:
    """A complete run folder without training: config, one metrics row per epoch, manifest."""
    folder = root / "runs" / name
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(dump_config(load_config(overrides=overrides)))
    lines = ["epoch," + ",".join(METRICS)]
    lines += [f"{i}," + ",".join(f"{v:.6f}" for v in values) for i, values in enumerate(epochs, 1)]
    (folder / "metrics.csv").write_text("\n".join(lines) + "\n")
    (folder / "manifest.json").write_text(json.dumps({"status": "complete"}))
    return folder


@pytest.fixture
def mode_sweep(tmp_path) -> dict[tuple[str, str], list[Path]]:
    """Clean control, then trigger.mode replace/append at size 3, centre and random, two seeds each."""
    rng = np.random.default_rng(0)
    folders: dict[tuple[str, str], list[Path]] = {}
    points = [("clean", "center", ["trigger.fraction=0.0"])]
    points += [(mode, loc, [f"trigger.mode={mode}", f"trigger.location={loc}"])
               for mode in ("replace", "append") for loc in ("center", "random")]
    for mode, loc, overrides in points:
        for seed in (0, 1):
            epochs = rng.uniform(0, 1, size=(2, len(METRICS))).tolist()
            folder = _fake_run(tmp_path, f"{mode}-{loc}_seed-{seed}", [*overrides, f"train.seed={seed}"], epochs)
            folders.setdefault((mode, loc), []).append(folder)
    return folders


def test_mode_sweep_one_column_per_mode(tmp_path, mode_sweep):
    report = build_report(tmp_path).read_text()
    header, rows = _read_table(tmp_path / "report" / "table1.csv")
    assert header == ["Clean", "3x3 px, mode=append", "3x3 px, mode=replace"]
    for column, key in zip(header, [("clean", "center"), ("append", "center"), ("replace", "center")]):
        for name, metric in ROWS:
            assert rows[name][header.index(column)] == _expected(mode_sweep[key], metric, "max")
    assert rows["AUROC-TT"][1] != rows["AUROC-TT"][2]

    header, rows = _read_table(tmp_path / "report" / "table2.csv")
    assert header == [f"{where} {stat}, mode={mode}" for mode in ("append", "replace")
                      for where in ("Fixed", "Random") for stat in ("Minimum", "Maximum")]
    for column, label in enumerate(header):
        where, stat = label.split(",")[0].split()
        key = (label.split("mode=")[1], "center" if where == "Fixed" else "random")
        assert rows["ASR(p=0.9)"][column] == _expected(mode_sweep[key], "asr_0.9", stat[:3].lower())

    header, rows = _read_table(tmp_path / "report" / "table3.csv")
    assert header == ["0.1"]
    assert list(rows) == ["Minimum, mode=append", "Maximum, mode=append", "Minimum, mode=replace",
                          "Maximum, mode=replace"]
    for label, (cells,) in rows.items():
        stat, mode = label.split(", mode=")
        assert cells == _expected(mode_sweep[(mode, "center")], "auroc_mix_0.1", stat[:3].lower())
    assert "| run | seed | trigger.fraction | trigger.location | trigger.mode | status |" in report
    assert "| append-center_seed-0 | 0 | 0.4 | center | append | complete |" in report


def test_lookup_refuses_to_pick_one_of_several_conditions(tmp_path, mode_sweep):
    records, _ = read_runs(tmp_path)
    cond = condition_table(runs_table(records))
    assert {"trigger.mode", "trigger.location", "trigger.fraction"} <= set(cond.columns)
    with pytest.raises(UserError, match="2 conditions that differ in trigger.mode"):
        lookup(cond, "asr_0.6", "max", size=3, location="center", fraction=0.4)
    mean, _, n = lookup(cond, "asr_0.6", "max", location="center", **{"trigger.mode": "append"})
    values = [_run_extreme(f, "asr_0.6", "max") for f in mode_sweep[("append", "center")]]
    assert n == 2 and mean == pytest.approx(np.mean(values), abs=1e-6)
    assert lookup(cond, "asr_0.6", "max", size=4) is None


def test_describe_labels():
    values = {"trigger.size": 3, "trigger.fraction": 0.1, "trigger.stage": "source", "train.epochs": 2,
              "trigger.seed": 1, "dataset.options.seed": 7}
    assert describe(values, ["trigger.size", "trigger.fraction", "trigger.stage", "train.epochs"]) == \
        "3x3 px, ρ=0.1, stage=source, epochs=2"
    assert describe(values, ["trigger.seed", "dataset.options.seed"]) == "trigger.seed=1, dataset.options.seed=7"
