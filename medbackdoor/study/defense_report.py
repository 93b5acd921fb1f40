"""Defense tables for the report: every ``RUN/defenses/*/summary.json`` of a sweep, side by side.

One tidy table (``report/defenses.csv``: one row per run and defense) and, from it, mean ± std over seeds:

* detection (data and input defenses): AUROC and TPR at 5% FPR, methods × attack conditions;
* model scanning: how many backdoored runs are flagged and have their target ranked first, and how many clean
  controls are flagged;
* mitigation: ASR(0.6) and AUROC-NN before → after;
* cleanse-and-retrain: ASR(0.6) and AUROC-NN of the retrained run.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

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
        for path in sorted((r.folder / "defenses").glob("*/summary.json")):
            s = json.loads(path.read_text())
            row = {"run": r.name, "seed": r.config.get("train.seed"), "condition": label, "clean_control": clean,
                   "defense": s.get("name", path.parent.name), "method": s["method"], "kind": s["kind"],
                   "seconds": s.get("seconds"), "ms_per_image": s.get("ms_per_image")}
            det = s.get("detection", {})
            row.update({k: det.get(k) for k in ("auroc", "tpr_at_1pct_fpr", "tpr_at_5pct_fpr", "precision", "recall")})
            if s["kind"] == "model":
                row.update({"verdict": float(s["backdoored_verdict"]), "target_rank": s.get("target_rank"),
                            "target_first": float(s.get("target_rank") == 1 and s["backdoored_verdict"]),
                            "iou": (s.get("reversed_trigger") or {}).get("iou_with_true_trigger")})
            for when in ("before", "after"):
                for k, v in (s.get(when) or {}).items():
                    row[f"{when}_{k}"] = v
            if "retrain" in s:
                for k, v in s["retrain"]["after"].items():
                    row[f"retrain_{k}"] = v
                row["retrain_dropped"] = s["retrain"]["dropped"]
            rows.append(row)
    return pd.DataFrame(rows)


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
        out.append(("defenses_mitigation", "Mitigation: ASR(0.6) and AUROC-NN, before → after",
                    _pivot(mit, _before_after, order)))
    re = df[df.filter(like="retrain_").notna().any(axis=1)] if df.filter(like="retrain_").shape[1] else df.iloc[:0]
    if not re.empty:
        out.append(("defenses_retrain", "Cleanse and retrain: ASR(0.6) / AUROC-NN of the retrained model "
                    "(last epoch)", _pivot(re, lambda g: f"{_mean(g['retrain_asr_0.6'])} / "
                                                         f"{_mean(g['retrain_auroc_nn'])}", order)))
    return out


def _mean(values) -> str:
    v = pd.to_numeric(values, errors="coerce").dropna()
    return f"{v.mean():.3f}" if len(v) else "–"


def _verdicts(g: pd.DataFrame) -> str:
    n = len(g)
    flagged = int(np.nansum(g["verdict"]))
    first = int(np.nansum(g["target_first"])) if "target_first" in g else 0
    return f"{flagged}/{n}" + ("" if g["clean_control"].all() else f" ({first}/{n})")


def _before_after(g: pd.DataFrame) -> str:
    return (f"ASR {_mean(g['before_asr_0.6'])} → {_mean(g['after_asr_0.6'])}; "
            f"NN {_mean(g['before_auroc_nn'])} → {_mean(g['after_auroc_nn'])}")
