"""From run folders to numbers: min and max over epochs per run, then mean ± std over seeds per condition.

A *condition* is every config key except the seed (and keys that do not change results: workers, device,
cache folder, evaluation batch size, which checkpoints are kept). The std is the sample standard deviation
(ddof = 1) over the seeds of a condition; with one seed it is NaN and printed as "–".
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from medbackdoor._io import read_json
from medbackdoor.errors import UserError

# The five metrics of the paper's tables, in its row order, with their printed names.
TABLE_ROWS = (("asr_0.6", "ASR(p=0.6)"), ("asr_0.9", "ASR(p=0.9)"), ("auroc_tt", "AUROC-TT"),
              ("auroc_nn", "AUROC-NN"), ("auroc_tn", "AUROC-TN"))
NOT_A_CONDITION = {"train.seed", "train.workers", "train.device", "cache_dir", "eval.batch_size",
                   "train.keep_checkpoints"}


@dataclass
class RunRecord:
    name: str
    folder: Path
    config: dict  # flattened dotted keys
    status: str
    extremes: dict[str, dict[str, float]]


def flatten(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def metric_extremes(path: Path) -> dict[str, dict[str, float]]:
    """``{metric: {"min": x, "max": y}}`` over the epochs of a ``metrics.csv`` (NaNs ignored)."""
    if not path.is_file():
        raise UserError(f"{path.parent} is not a run folder (no metrics.csv)")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise UserError(f"{path} has no epochs yet")
    out = {}
    for key in rows[0]:
        values = [float(r[key]) for r in rows if r[key] not in ("", "nan")]
        values = [v for v in values if np.isfinite(v)]
        if values:
            out[key] = {"min": min(values), "max": max(values)}
    return out


def read_runs(sweep_dir: Path) -> tuple[list[RunRecord], list[str]]:
    """Every run folder under ``sweep_dir/runs``; returns (complete runs, notes about the others)."""
    runs_dir = Path(sweep_dir) / "runs"
    if not runs_dir.is_dir():
        raise UserError(f"{sweep_dir} has no runs/ folder: is it the --out of a sweep?")
    records, notes = [], []
    for folder in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        manifest = read_json(folder / "manifest.json")
        status = manifest.get("status", "unknown")
        if status != "complete" or not (folder / "config.yaml").is_file():
            notes.append(f"run {folder.name} is {status}" + (f": {manifest['error']}" if manifest.get("error") else "")
                         + "; left out")
            continue
        config = flatten(yaml.safe_load((folder / "config.yaml").read_text()))
        records.append(RunRecord(folder.name, folder, config, status, metric_extremes(folder / "metrics.csv")))
    return records, notes


def runs_table(records: list[RunRecord]) -> pd.DataFrame:
    """One row per run and (metric, stat): the tidy base of every table."""
    rows = []
    for r in records:
        condition = {k: v for k, v in r.config.items() if k not in NOT_A_CONDITION}
        for metric, ext in r.extremes.items():
            for stat in ("min", "max"):
                rows.append({"run": r.name, "seed": r.config.get("train.seed"), "condition": _key(condition),
                             "metric": metric, "stat": stat, "value": ext[stat], **_short(condition)})
    return pd.DataFrame(rows)


def condition_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean, sample std and count over seeds, per (condition, metric, stat)."""
    if runs.empty:
        return runs
    keys = [c for c in runs.columns if c not in ("run", "seed", "value")]
    grouped = runs.groupby(keys, dropna=False)["value"]
    out = grouped.agg(mean="mean", std=lambda v: v.std(ddof=1) if len(v) > 1 else np.nan, n="count")
    return out.reset_index()


def _key(condition: dict) -> str:
    return json.dumps({k: condition[k] for k in sorted(condition)}, sort_keys=True, default=str)


def _short(condition: dict) -> dict:
    """The trigger keys every table is laid out by, as plain columns."""
    return {"size": condition.get("trigger.size"), "location": condition.get("trigger.location"),
            "fraction": condition.get("trigger.fraction")}
