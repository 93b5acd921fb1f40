"""Defense tables for the report: every ``RUN/defenses/*/summary.json`` of a sweep, side by side.

One tidy table (``report/defenses.csv``: one row per run and defense) and, from it, mean ± std over seeds:

* detection (data and input defenses): AUROC and TPR at 5% FPR, methods × attack conditions;
* model scanning: how many backdoored runs are flagged and have their target ranked first, and how many clean
  controls are flagged;
* mitigation: ASR and AUROC-NN before → after;
* cleanse-and-retrain: ASR and AUROC-NN of the retrained run.

ASR is the run's own: at its first ``eval.thresholds`` p, strict or not (:func:`~medbackdoor.metrics.metric_columns`
of its ``eval`` settings, the columns its summaries hold).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from medbackdoor.defenses.summary import DefenseSummary, read_summary
from medbackdoor.metrics.columns import eval_config_of, table_columns
from medbackdoor.rundir import RunDir
from medbackdoor.study.aggregate import RunRecord, condition_of


def defense_rows(records: list[RunRecord], describe, label_keys) -> pd.DataFrame:
    """One row per (run, defense) with the numbers the tables need; ``condition`` names the attack."""
    conditions = [condition_of(r.config) for r in records]
    keys = label_keys(conditions)
    rows = []
    for r, cond in zip(records, conditions):
        clean = not cond.get("trigger.fraction")
        label = "Clean" if clean else describe(cond, [k for k in keys if k != "trigger.fraction"] +
                                               (["trigger.fraction"] if "trigger.fraction" in keys else []))
        asr = next((c for c in table_columns(eval_config_of(r.config)) if c.group == "asr"), None)
        for path in RunDir(r.folder).defense_summary_paths():
            rows.append({"run": r.name, "seed": r.config.get("train.seed"), "condition": label, "clean_control": clean,
                         "asr_metric": asr.name if asr else None, "asr_label": asr.label if asr else None,
                         **_summary_row(read_summary(path))})
    return pd.DataFrame(rows)


def _summary_row(s: DefenseSummary) -> dict:
    """The numbers of one summary the tables use, flat."""
    row = {"defense": s.name, "method": s.method, "kind": s.kind, "seconds": s.seconds,
           "ms_per_image": s.ms_per_image}
    det = s.detection or {}
    row.update({k: det.get(k) for k in ("auroc", "tpr_at_1pct_fpr", "tpr_at_5pct_fpr", "precision", "recall")})
    if s.kind == "model":
        row.update({"verdict": float(s.backdoored_verdict), "target_rank": s.target_rank,
                    "target_first": float(s.target_rank == 1 and s.backdoored_verdict),
                    "iou": (s.reversed_trigger or {}).get("iou_with_true_trigger")})
    for when, values in (("before", s.before), ("after", s.after)):
        row.update({f"{when}_{k}": v for k, v in (values or {}).items()})
    if s.retrain is not None:
        row.update({f"retrain_{k}": v for k, v in s.retrain["after"].items()})
        row["retrain_dropped"] = s.retrain["dropped"]
    return row


def _cell(values: pd.Series) -> str:
    v = pd.to_numeric(values, errors="coerce").dropna()
    if v.empty:
        return "–"
    std = f"{v.std(ddof=1):.3f}" if len(v) > 1 else "–"
    return f"{v.mean():.3f} ± {std}"


def _pivot(df: pd.DataFrame, value, order: list[str]) -> pd.DataFrame:
    """Defenses as rows, conditions as columns; ``value`` is a column name or a function of a group."""
    table = {}
    for (defense, condition), group in df.groupby(["defense", "condition"], sort=False):
        table.setdefault(defense, {})[condition] = value(group) if callable(value) else _cell(group[value])
    out = pd.DataFrame(table).T
    return out[[c for c in order if c in out.columns]]


def _order(df: pd.DataFrame) -> list[str]:
    names = list(dict.fromkeys(df["condition"]))
    return (["Clean"] if "Clean" in names else []) + [n for n in names if n != "Clean"]


def defense_tables(df: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame]]:
    """``(file name, caption, table)`` for each defense table that has rows."""
    if df.empty:
        return []
    order = _order(df)
    out = []
    detect = df[df["kind"].isin(["data", "input"])]
    attacked = detect[~detect["clean_control"]]
    if not attacked.empty:
        out.append(("defenses_auroc", "Detection AUROC (data defenses: poisoned training samples; input defenses: "
                    "triggered test images), mean ± std over seeds", _pivot(attacked, "auroc", order)))
        out.append(("defenses_tpr5", "Detection TPR at 5% FPR", _pivot(attacked, "tpr_at_5pct_fpr", order)))
        flags = attacked[attacked["precision"].notna() | attacked["recall"].notna()]
        if not flags.empty:
            out.append(("defenses_flags", "The methods' own flag rules: precision / recall",
                        _pivot(flags, lambda g: f"{_mean(g['precision'])} / {_mean(g['recall'])}", order)))
        speed = attacked.groupby("defense")["ms_per_image"].mean().to_frame("ms per image").round(2)
        out.append(("defenses_speed", "Cost: milliseconds per scored image (this machine)", speed))
    model = df[df["kind"] == "model"]
    if not model.empty:
        out.append(("defenses_model", "Model scanning: runs flagged as backdoored (target ranked first) / runs",
                    _pivot(model, _verdicts, order)))
    mit = df[df["kind"] == "mitigation"]
    if not mit.empty:
        out.append(("defenses_mitigation", "Mitigation: the run's ASR and AUROC-NN, before → after",
                    _pivot(mit, _before_after, order)))
    re = df[df.filter(like="retrain_").notna().any(axis=1)] if df.filter(like="retrain_").shape[1] else df.iloc[:0]
    if not re.empty:
        out.append(("defenses_retrain", "Cleanse and retrain: the run's ASR / AUROC-NN of the retrained model "
                    "(last epoch)", _pivot(re, _retrained, order)))
    return out


def _mean(values) -> str:
    v = pd.to_numeric(values, errors="coerce").dropna()
    return f"{v.mean():.3f}" if len(v) else "–"


def _verdicts(g: pd.DataFrame) -> str:
    n = len(g)
    flagged = int(np.nansum(g["verdict"]))
    first = int(np.nansum(g["target_first"])) if "target_first" in g else 0
    return f"{flagged}/{n}" + ("" if g["clean_control"].all() else f" ({first}/{n})")


def _asr(g: pd.DataFrame) -> tuple[str, str]:
    """The ASR metric and its label of a group's runs (one condition: one setting)."""
    metric, label = g["asr_metric"].iloc[0], g["asr_label"].iloc[0]
    return (metric, label) if isinstance(metric, str) else ("", "ASR")


def _col(g: pd.DataFrame, name: str) -> pd.Series:
    return g[name] if name in g else pd.Series(dtype=float)


def _before_after(g: pd.DataFrame) -> str:
    metric, label = _asr(g)
    return (f"{label} {_mean(_col(g, f'before_{metric}'))} → {_mean(_col(g, f'after_{metric}'))}; "
            f"NN {_mean(_col(g, 'before_auroc_nn'))} → {_mean(_col(g, 'after_auroc_nn'))}")


def _retrained(g: pd.DataFrame) -> str:
    metric, label = _asr(g)
    return f"{label} {_mean(_col(g, f'retrain_{metric}'))} / {_mean(_col(g, 'retrain_auroc_nn'))}"
