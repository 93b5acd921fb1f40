"""Defense tables for the report: every ``RUN/defenses/*/summary.json`` of a sweep, side by side.

One tidy table (``report/defenses.csv``: one row per run and defense) and, from it, mean ± std over seeds:

* detection (data and input defenses): AUROC, the ROC read-off TPR at 5% FPR (a threshold chosen with the truth,
  which no defender has), and the flag rule calibrated on the holdout: its TPR and the false-positive rate it
  really gets beside the nominal one, on the clean control too;
* the attack × defense summary: per attack the best data and input defense, the attacks that beat every one
  (AUROC < 0.8), and per defense the attacks it fails;
* model scanning: how many backdoored runs are flagged and have their target ranked first, and how many clean
  controls are flagged;
* mitigation: ASR and AUROC-NN before → after, a defense effectiveness rating in the manner of BackdoorBench's
  DER (:func:`der`) on the ASR in excess of the clean control's, and whether the repair meets the study's target
  (:data:`REPAIRED_ASR`, :data:`REPAIRED_NN`);
* cleanse-and-retrain: ASR and AUROC-NN of the retrained run beside the clean control's ASR for the same trigger
  and the poisoned samples the cleanse kept, and its DER.

ASR is the run's own: at its first ``eval.thresholds`` p, strict or not (:func:`~medbackdoor.metrics.metric_columns`
of its ``eval`` settings, the columns its summaries hold).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from medbackdoor.defenses.summary import DefenseSummary, read_summary
from medbackdoor.metrics.columns import eval_config_of, table_columns
from medbackdoor.report.aggregate import RunRecord, condition_of
from medbackdoor.rundir import RunDir


def defense_rows(records: list[RunRecord], describe, label_keys) -> pd.DataFrame:
    """One row per (run, defense) with the numbers the tables need; ``condition`` names the attack."""
    conditions = [condition_of(r.config) for r in records]
    keys = label_keys(conditions)
    # what else varies (model.arch, train.lr, ...) tells clean controls apart, so none is merged with another
    setting = [k for k in keys if not k.startswith("trigger.")]
    rows = []
    for r, cond in zip(records, conditions):
        clean = not cond.get("trigger.fraction")
        attack = [k for k in keys if k != "trigger.fraction"] + (["trigger.fraction"] if "trigger.fraction" in keys
                                                                  else [])
        label = (f"Clean ({describe(cond, setting)})" if setting else "Clean") if clean else describe(cond, attack)
        asr = _asr_column(r)
        control = _control_asr(r.folder, asr.name if asr else None)
        for path in RunDir(r.folder).defense_summary_paths():
            summary = read_summary(path)
            rows.append({"run": r.name, "seed": r.config.get("train.seed"), "condition": label, "clean_control": clean,
                         "asr_metric": asr.name if asr else None, "asr_label": asr.label if asr else None,
                         "control_asr": 0.0 if clean else control, **_summary_row(summary),
                         "retrain_control_asr": _control_asr(r.folder, asr.name if asr else None,
                                                             RunDir(r.folder).retrain_control_path(summary.name))})
    return pd.DataFrame(rows)


def _control_asr(folder, metric: str | None, path=None) -> float:
    """The clean control's ASR under this run's trigger (``RUN/control.json``, or another control scoring at
    ``path``), at ``metric``'s p; NaN without."""
    path = RunDir(folder).control_path if path is None else path
    if metric is None or not path.is_file():
        return float("nan")
    value = json.loads(path.read_text()).get("asr", {})
    value = value.get(metric.removeprefix("asr_")) if isinstance(value, dict) else value  # single-label: a number
    return float("nan") if value is None else float(value)


def _asr_column(record):
    """The ASR column a run is judged on: the first ``asr_{p}`` of its evaluation settings, or a single-label run's
    ``asr`` (by argmax; read off its metrics.csv)."""
    from medbackdoor.metrics.columns import SINGLE_LABEL

    if RunDir(record.folder).single_label():
        return next(c for c in SINGLE_LABEL if c.name == "asr")
    return next((c for c in table_columns(eval_config_of(record.config)) if c.group == "asr"), None)


def der(asr_before: float, asr_after: float, nn_before: float, nn_after: float, control_asr: float = 0.0,
        control_after: float | None = None) -> float:
    """Defense effectiveness rating, BackdoorBench's DER made to count only the backdoor's own ASR.

    ``((max(0, ΔASR) − max(0, ΔNN)) + 1) / 2`` with ΔASR the drop of the ASR in excess of the clean control's
    (``max(0, ASR − control)``, before minus after) and ΔNN the drop of AUROC-NN: 1 removes all the excess
    at no cost to the clean AUROC, 0.5 changes nothing (or trades one for the other), 0 is the worst. The excess
    after is measured against ``control_after`` (the clean control put through the same repair) when given, else
    against ``control_asr``. NaN when a control's ASR is unknown (NaN), as the excess is then unknown.
    """
    control_after = control_asr if control_after is None else control_after
    if np.isnan(control_asr) or np.isnan(control_after):
        return float("nan")
    excess_before, excess_after = max(0.0, asr_before - control_asr), max(0.0, asr_after - control_after)
    return (max(0.0, excess_before - excess_after) - max(0.0, nn_before - nn_after) + 1.0) / 2.0


def _summary_row(s: DefenseSummary) -> dict:
    """The numbers of one summary the tables use, flat."""
    row = {"defense": s.name, "method": s.method, "kind": s.kind, "seconds": s.seconds,
           "ms_per_image": s.ms_per_image}
    det = s.detection or {}
    row.update({k: det.get(k) for k in ("auroc", "tpr_at_1pct_fpr", "tpr_at_5pct_fpr", "precision", "recall")})
    row["realised_fpr"] = det.get("false_positive_rate")
    row["nominal_fpr"] = (s.options or {}).get("fpr")
    if s.kind == "model":
        row.update({"verdict": float(s.backdoored_verdict), "target_rank": s.target_rank,
                    "target_first": float(s.target_rank == 1 and s.backdoored_verdict),
                    "iou": (s.reversed_trigger or {}).get("iou_with_true_trigger")})
    for when, values in (("before", s.before), ("after", s.after)):
        row.update({f"{when}_{k}": v for k, v in (values or {}).items()})
    if s.retrain is not None:
        row.update({f"retrain_{k}": v for k, v in s.retrain["after"].items()})
        row.update({f"retrain_before_{k}": v for k, v in s.retrain.get("before", {}).items()})
        row["retrain_dropped"] = s.retrain["dropped"]
        row["retrain_poisoned_kept"] = _poisoned_kept(s.retrain.get("run"))
    return row


def _poisoned_kept(folder) -> float:
    """How many poisoned samples a cleanse-and-retrain run still trained on (its manifest); NaN when unknown."""
    if not folder or not RunDir(folder).manifest_path.is_file():
        return float("nan")
    kept = RunDir(folder).manifest().poisoning.get("poisoned_kept")
    return float("nan") if kept is None else float(kept)


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
    return out[[c for c in order if c in out.columns]].fillna("–")  # a defense that did not run on a condition


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
        out.append(("defenses_tpr5", "Detection TPR at 5% FPR, read off the ROC (a threshold chosen with the truth)",
                    _pivot(attacked, "tpr_at_5pct_fpr", order)))
        flags = attacked[attacked["precision"].notna() | attacked["recall"].notna()]
        if not flags.empty:
            out.append(("defenses_flags", "The methods' own flag rules: precision / recall",
                        _pivot(flags, lambda g: f"{_mean(g['precision'])} / {_mean(g['recall'])}", order)))
    calibrated = detect[detect["realised_fpr"].notna()] if "realised_fpr" in detect else detect.iloc[:0]
    if not calibrated.empty:
        out.append(("defenses_calibrated", "The flag rule calibrated on the holdout: TPR / realised FPR (nominal FPR "
                    "after the name; Clean: FPR only)", _pivot(calibrated, _tpr_fpr, order).rename(index=_nominal(
                        calibrated))))
    if not attacked.empty:
        out.append(("defenses_best", "Per attack: the best data and input defense by mean AUROC, chosen with the "
                    "truth (no defender can make this choice; the scorecard reports declared defaults only), and "
                    "whether every detection defense fails it (AUROC < 0.8)", _best(attacked, order)))
        out.append(("defenses_failures", "Per defense: the attacks it fails (mean AUROC < 0.8)",
                    _failures(attacked, order)))
        speed = attacked.groupby("defense")["ms_per_image"].mean().to_frame("ms per image").round(2)
        out.append(("defenses_speed", "Cost: milliseconds per scored image (this machine)", speed))
    model = df[df["kind"] == "model"]
    if not model.empty:
        out.append(("defenses_model", "Model scanning: runs flagged as backdoored (target ranked first) / runs",
                    _pivot(model, _verdicts, order)))
    mit = df[(df["kind"] == "mitigation") & ~df["clean_control"]]
    if not mit.empty:
        out.append(("defenses_mitigation", "Mitigation: the run's ASR and AUROC-NN, before → after",
                    _pivot(mit, _before_after, order)))
        out.append(("defenses_der", "Mitigation: DER on the ASR in excess of the clean control's (1: all of it "
                    f"removed at no cost to AUROC-NN; 0.5: nothing changed; {NO_CONTROL}: a run of the condition has "
                    "no scored clean control, so its excess is unknown)", _pivot(mit, _der_mitigation, order)))
        out.append(("defenses_repaired", f"Mitigation: repaired, i.e. the ASR in excess of the clean control's at "
                    f"most {REPAIRED_ASR} after, at an AUROC-NN drop of at most {REPAIRED_NN} (means over seeds): "
                    "yes / no, with the excess ASR and the drop", _pivot(mit, _repaired, order)))
    re = df[df.filter(like="retrain_").notna().any(axis=1)] if df.filter(like="retrain_").shape[1] else df.iloc[:0]
    re = re[~re["clean_control"]] if not re.empty else re
    if not re.empty:
        out.append(("defenses_retrain", "Cleanse and retrain: the retrained model's ASR / AUROC-NN (last epoch), "
                    "the clean control's ASR under the same trigger, that of the clean control retrained without as "
                    "many random samples as the cleanse dropped, the poisoned samples the cleanse kept, and DER",
                    _pivot(re, _retrained, order)))
    return out


def _tpr_fpr(g: pd.DataFrame) -> str:
    if g["clean_control"].all():
        return _mean(g["realised_fpr"])
    return f"{_mean(g['recall'])} / {_mean(g['realised_fpr'])}"


def _nominal(df: pd.DataFrame) -> dict[str, str]:
    """Row labels with each defense's nominal FPR (its ``fpr`` option), where it has one."""
    out = {}
    for defense, g in df.groupby("defense", sort=False):
        nominal = pd.to_numeric(g["nominal_fpr"], errors="coerce").dropna()
        out[defense] = f"{defense} ({nominal.iloc[0]:g})" if len(nominal) else defense
    return out


FAIL_AUROC = 0.8  # a detection defense with a mean AUROC below this fails the attack


def _best(df: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    means = df.assign(auroc=pd.to_numeric(df["auroc"], errors="coerce")) \
        .groupby(["condition", "kind", "defense"], sort=False)["auroc"].mean()
    rows = {}
    for condition in [c for c in order if c in set(df["condition"])]:
        row = {}
        for kind in ("data", "input"):
            part = means.get(condition, pd.Series(dtype=float))
            part = part[kind] if kind in part.index.get_level_values(0) else pd.Series(dtype=float)
            part = part.dropna()
            row[f"best {kind} defense"] = f"{part.idxmax()} ({part.max():.3f})" if len(part) else "–"
        every = means.get(condition, pd.Series(dtype=float)).dropna()
        row["beats every detection defense"] = "yes" if len(every) and (every < FAIL_AUROC).all() else "no"
        rows[condition] = row
    return pd.DataFrame(rows).T


def _failures(df: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    means = df.assign(auroc=pd.to_numeric(df["auroc"], errors="coerce")) \
        .groupby(["defense", "condition"], sort=False)["auroc"].mean()
    rows = {}
    for defense in dict.fromkeys(df["defense"]):
        part = means[defense].dropna()
        failed = [c for c in order if c in part.index and part[c] < FAIL_AUROC]
        rows[defense] = {"attacks failed": f"{len(failed)}/{len(part)}", "which": "; ".join(failed) or "none"}
    return pd.DataFrame(rows).T


def _der_mitigation(g: pd.DataFrame) -> str:
    metric = _asr(g)[0]
    if f"before_{metric}" not in g or f"after_{metric}" not in g:
        return "–"
    nn = _quality(g)
    values = pd.Series([der(r[f"before_{metric}"], r[f"after_{metric}"], r.get(f"before_{nn}", np.nan),
                            r.get(f"after_{nn}", np.nan), float(r["control_asr"])) for _, r in g.iterrows()],
                       dtype=float)
    return _no_control(g) or _cell(values)


NO_CONTROL = "– (no clean control)"


def _no_control(g: pd.DataFrame) -> str:
    """:data:`NO_CONTROL` when a run of the group has no scored clean control (its excess ASR is unknown), else
    ``""``."""
    return NO_CONTROL if pd.to_numeric(g["control_asr"], errors="coerce").isna().any() else ""


REPAIRED_ASR, REPAIRED_NN = 0.10, 0.02  # the repair target of the defense study (docs/results/defenses.md)


def _repaired(g: pd.DataFrame) -> str:
    """Whether a repair meets the study's target on a condition: the mean ASR in excess of the clean control's at
    most :data:`REPAIRED_ASR` after, at a mean AUROC-NN drop of at most :data:`REPAIRED_NN`."""
    metric = _asr(g)[0]
    if f"after_{metric}" not in g:
        return "–"
    if _no_control(g):
        return NO_CONTROL
    control = pd.to_numeric(g["control_asr"], errors="coerce")
    excess = (pd.to_numeric(g[f"after_{metric}"], errors="coerce") - control).clip(lower=0).mean()
    nn = _quality(g)
    drop = (pd.to_numeric(_col(g, f"before_{nn}"), errors="coerce")
            - pd.to_numeric(_col(g, f"after_{nn}"), errors="coerce")).mean()
    if np.isnan(excess) or np.isnan(drop):
        return "–"
    ok = excess <= REPAIRED_ASR + 1e-12 and drop <= REPAIRED_NN + 1e-12
    return f"{'yes' if ok else 'no'} ({excess:.3f}, {drop:+.3f})"


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


def _quality(g: pd.DataFrame) -> str:
    """The clean quality a repair must keep: micro AUROC-NN, or a single-label run's macro AUROC (its ASR
    metric is ``asr``)."""
    return "auroc_macro" if _asr(g)[0] == "asr" else "auroc_nn"


def _col(g: pd.DataFrame, name: str) -> pd.Series:
    return g[name] if name in g else pd.Series(dtype=float)


def _before_after(g: pd.DataFrame) -> str:
    metric, label = _asr(g)
    nn = _quality(g)
    name = "NN" if nn == "auroc_nn" else "AUROC(macro)"
    return (f"{label} {_mean(_col(g, f'before_{metric}'))} → {_mean(_col(g, f'after_{metric}'))}; "
            f"{name} {_mean(_col(g, f'before_{nn}'))} → {_mean(_col(g, f'after_{nn}'))}")


def _retrained(g: pd.DataFrame) -> str:
    metric, label = _asr(g)
    nn = _quality(g)
    text = (f"{label} {_mean(_col(g, f'retrain_{metric}'))} / {_mean(_col(g, f'retrain_{nn}'))}; "
            f"control {_mean(g['control_asr'])}; control retrained without as many random samples "
            f"{_mean(_col(g, 'retrain_control_asr'))}; poisoned kept {_mean(_col(g, 'retrain_poisoned_kept'))}")
    if f"retrain_before_{metric}" in g and f"retrain_before_{nn}" in g:
        values = [der(r[f"retrain_before_{metric}"], r[f"retrain_{metric}"], r[f"retrain_before_{nn}"],
                      r[f"retrain_{nn}"], float(r["control_asr"])) for _, r in g.iterrows()]
        text += f"; DER {_no_control(g) or _mean(pd.Series(values, dtype=float))}"
    return text
