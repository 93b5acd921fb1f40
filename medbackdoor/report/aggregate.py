"""From run folders to numbers: min and max over epochs per run, then mean ± std over seeds per condition.

A *condition* is every config key except the seed (and :data:`medbackdoor.config.NEUTRAL_KEYS`, the keys that
do not change results: workers, device, cache folder, evaluation batch size, which checkpoints are kept). The
std is the sample standard deviation (ddof = 1) over the seeds of a condition; with one seed it is NaN and
printed as "–".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from medbackdoor.config import NEUTRAL_KEYS, EvalConfig, flatten
from medbackdoor.errors import UserError
from medbackdoor.manifest import Manifest
from medbackdoor.metrics.columns import eval_config_of, table_columns
from medbackdoor.rundir import RunDir, SweepDir
from medbackdoor.triggers import shared_defaults

# The five metrics of the paper's tables (its p = 0.6 and 0.9: the default evaluation settings), in its row order,
# with their printed names. A sweep's own tables take theirs from its runs' settings (:func:`table_rows`).
TABLE_ROWS = tuple((c.name, c.label) for c in table_columns(EvalConfig()))
NOT_A_CONDITION = NEUTRAL_KEYS | {"train.seed"}


@dataclass
class RunRecord:
    name: str
    folder: Path
    config: dict  # flattened dotted keys
    status: str
    extremes: dict[str, dict[str, float]]


def read_runs(sweep_dir: Path) -> tuple[list[RunRecord], list[str]]:
    """Every run folder under ``sweep_dir/runs``; returns (complete runs, notes about the others)."""
    runs_dir = SweepDir(sweep_dir).runs_dir
    if not runs_dir.is_dir():
        raise UserError(f"{sweep_dir} has no runs/ folder: is it the --out of a sweep?")
    records, notes = [], []
    for folder in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        run = RunDir(folder)
        manifest = run.manifest()
        status = manifest.status
        if status != "complete" or not run.exists():
            notes.append(f"run {folder.name} is {status}" + (f": {manifest.error}" if manifest.error else "")
                         + "; left out")
            continue
        config = flatten(run.config().to_dict())
        records.append(RunRecord(folder.name, folder, config, status, {**run.extremes(), **manifest_metrics(manifest)}))
    return records, notes


def manifest_metrics(manifest: Manifest) -> dict[str, dict[str, float]]:
    """The per-run numbers of a manifest, as metrics with min = max: the trigger's stealth (``psnr``, ``ssim``,
    ``changed_pixels`` between clean and triggered test images) and its survival through preprocessing
    (``survival_train``, ``survival_test``). Non-finite values are left out."""
    values = {k: manifest.stealth.get(k) for k in ("psnr", "ssim", "changed_pixels")}
    values.update({f"survival_{k}": v for k, v in manifest.trigger_survival.items()})
    return {k: {"min": float(v), "max": float(v)} for k, v in values.items()
            if isinstance(v, int | float) and np.isfinite(v)}


def table_rows(configs: list[dict]) -> tuple[tuple[str, str], ...]:
    """The table rows ``(metric, label)`` of runs with flattened ``configs``: the union, in order, of each run's
    :func:`~medbackdoor.metrics.table_columns` (ASR at its thresholds, AUROC-TT/NN/TN); labels that differ
    between runs for one metric (strict or not) are joined. The paper's rows when there are no configs."""
    labels: dict[str, list[str]] = {}
    for config in configs:
        for c in table_columns(eval_config_of(config)):
            if c.label not in labels.setdefault(c.name, []):
                labels[c.name].append(c.label)
    if not labels:
        return TABLE_ROWS
    asr = sorted((n for n in labels if n.startswith("asr_")), key=lambda n: float(n.removeprefix("asr_")))
    return tuple((n, " / ".join(labels[n])) for n in [*asr, *(n for n in labels if not n.startswith("asr_"))])


def condition_of(config: dict) -> dict:
    """The condition of a run: its flattened config less the seed and the neutral keys, an unset ``trigger.size``,
    ``trigger.location`` or ``trigger.value`` read as the trigger's own default (so a square left at its defaults
    and one set to 3 px, centre, black are one condition)."""
    condition = {k: v for k, v in config.items() if k not in NOT_A_CONDITION}
    for key, value in shared_defaults(str(condition.get("trigger.kind", "square"))).items():
        if condition.get(f"trigger.{key}") is None and f"trigger.options.{key}" not in condition:
            condition[f"trigger.{key}"] = value
    return condition


def varying_keys(conditions: list[dict]) -> list[str]:
    """The dotted keys whose value differs between some of ``conditions`` (a missing key counts as a value).

    Args:
        conditions: flattened configs, e.g. from :func:`condition_of`.

    Returns:
        The keys, sorted.
    """
    keys = set().union(*conditions) if conditions else set()
    return sorted(k for k in keys if len({_canonical(c.get(k)) for c in conditions}) > 1)


def runs_table(records: list[RunRecord]) -> pd.DataFrame:
    """One row per run and (metric, stat): the tidy base of every table.

    Columns: ``run``, ``seed``, ``condition`` (the condition as canonical JSON), ``metric``, ``stat``, ``value``,
    the short trigger columns ``size``, ``location``, ``fraction``, and one column (dotted name) per condition key
    that varies across ``records``.
    """
    conditions = [condition_of(r.config) for r in records]
    varying = varying_keys(conditions)
    rows = []
    for r, condition in zip(records, conditions):
        columns = {**_short(condition), **{k: _hashable(condition.get(k)) for k in varying}}
        for metric, ext in r.extremes.items():
            for stat in ("min", "max"):
                rows.append({"run": r.name, "seed": r.config.get("train.seed"), "condition": _canonical(condition),
                             "metric": metric, "stat": stat, "value": ext[stat], **columns})
    return pd.DataFrame(rows)


def condition_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean, sample std and count over seeds, per (condition, metric, stat), keeping every condition column."""
    if runs.empty:
        return runs
    keys = [c for c in runs.columns if c not in ("run", "seed", "value")]
    grouped = runs.groupby(keys, dropna=False)["value"]
    out = grouped.agg(mean="mean", std=lambda v: v.std(ddof=1) if len(v) > 1 else np.nan, n="count")
    return out.reset_index()


def _canonical(value) -> str:
    """A value (or a whole condition) as canonical JSON, so equal configs give equal strings."""
    return json.dumps(value, sort_keys=True, default=str)


def _hashable(value):
    """Lists and mappings as canonical JSON (a table cell must be hashable to group by); other values as they are."""
    return _canonical(value) if isinstance(value, (list, dict)) else value


def _short(condition: dict) -> dict:
    """The trigger keys every table is laid out by, as plain columns."""
    return {"size": condition.get("trigger.size"), "location": condition.get("trigger.location"),
            "fraction": condition.get("trigger.fraction")}
