"""The benchmark's scorecard: one row per (attack condition, defense), over seeds, with the benchmark's rules.

Read from a sweep's run folders (nothing here trains or scores a model). Per seed, for every defense summary of a
poisoned run (``RUN/defenses/NAME/summary.json``):

* the attack: the run's ASR at its first ``eval.thresholds`` p (at the defended epoch) and the clean control's
  ASR under the same trigger (``RUN/control.json``). The attack *implanted* when the mean over seeds of the
  difference is at least :data:`RULES` ``implant_margin``; no defense is credited on a cell where it did not.
* input defenses: detection is scored on the triggered test images **where the backdoor fires** (the run's target
  score reaches p on an image whose true label lacks the target; for a source-specific trigger, on the source
  images only) against every clean test image, from the defense's ``scores.csv`` and the run's predictions file.
  The same defense on the clean control's model with the same inputs (``NAME/clean-model/``, a sweep's
  ``clean_model`` step) gives the trigger-visibility baseline: a detector *detects the backdoor* where its AUROC
  beats that baseline by :data:`RULES` ``detect_margin``. TPR and FPR are those of the flag rule calibrated on the
  holdout, on the same two sets.
* data defenses: AUROC over poisoned against clean training samples (the attack's cross and cover samples left
  out), the flag rule's TPR and realised FPR on the clean samples, and the share of cross samples flagged apart.
* model defenses: ``tpr`` is the share of backdoored runs flagged, ``fpr`` that of clean controls.
* mitigations (and cleanse-and-retrain): the ASR after, its signed change, the signed change of micro AUROC-NN,
  macro AUROC-NN after, and DER on the ASR in excess of the clean control *mitigated by the same repair*
  (``NAME/clean-model/``; without it, the unmitigated control, and ``control_mitigated`` says so).

Every number is a mean over seeds; ``*_lo``/``*_hi`` are the two-sided 95% Student-t interval of that mean over
seeds (NaN with one seed). A column that does not apply to a defense's kind is NaN.

A single-label run (multi-class or binary) is read with its own metrics: ``asr`` is BackdoorBench's ASR (by
argmax), the backdoor fires on a triggered image whose true class is not the target and whose argmax is, and the
clean quality a repair must keep (the ``d_auroc_nn`` column and DER) is the macro one-vs-rest AUROC on the clean
test set; ``auroc_macro`` is that AUROC.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from medbackdoor.defenses.scoring import detection_summary
from medbackdoor.defenses.summary import DefenseSummary, read_summary
from medbackdoor.metrics.multilabel import mean_auroc
from medbackdoor.metrics.singlelabel import auroc_macro
from medbackdoor.report.aggregate import RunRecord
from medbackdoor.report.defenses import der
from medbackdoor.rundir import RunDir

# The benchmark's rules and targets, frozen in configs/defaults.json with every default (medbackdoor.defaults).
RULES = {
    "implant_margin": 0.5,  # ASR − clean model's ASR under the same trigger, mean over seeds, at the run's first p
    "detect_margin": 0.2,  # input detector AUROC − the same detector's on the clean model
    "interval": "two-sided 95% Student-t interval of the mean over seeds",
    "target_data_auroc": 0.95,
    "target_input_auroc": 0.95, "target_input_tpr": 0.8, "target_input_fpr": 0.10,
    "target_repair_excess": 0.10, "target_repair_d_auroc_nn": -0.03,
}

COLUMNS = ["trigger", "setting", "label", "target", "fraction", "model", "dataset", "defense", "kind", "seeds",
           "implanted", "asr", "asr_lo", "asr_hi", "asr_clean_model", "auroc", "auroc_lo", "auroc_hi",
           "auroc_clean_model", "detects", "auroc_macro", "tpr", "fpr", "fpr_nominal", "cross_flagged", "firing",
           "asr_after", "asr_after_lo", "asr_after_hi", "d_asr", "control_after", "control_mitigated", "excess_after",
           "d_auroc_nn", "d_auroc_nn_lo", "d_auroc_nn_hi", "der", "meets_target", "defaults_digest"]


def interval(values) -> tuple[float, float, float]:
    """(mean, lo, hi): the mean of the finite ``values`` and its two-sided 95% Student-t interval (NaN bounds with
    fewer than two values)."""
    from scipy.stats import t

    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], np.float64)
    if not len(v):
        return math.nan, math.nan, math.nan
    mean = float(v.mean())
    if len(v) < 2:
        return mean, math.nan, math.nan
    half = float(t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return mean, mean - half, mean + half


def single_label_predictions(predictions: dict) -> bool:
    """Whether a predictions file is a single-label run's (its ``task`` is ``multiclass`` or ``binary``)."""
    return "task" in predictions and str(predictions["task"]) in ("multiclass", "binary")


def firing_mask(predictions: dict, p: float, strict: bool) -> np.ndarray:
    """The test rows where the backdoor fires: the true label lacks the target (known 0), the triggered image's
    target score reaches ``p`` (strictly above with ``strict``), and, for a source-specific trigger, the row is a
    source image (``condition``). A single-label run's (BackdoorBench's ASR rows): the true class is known and
    not the target, and the triggered image's argmax is the target (``p`` is not used)."""
    y, s, t = np.asarray(predictions["y_true"], np.float64), predictions["score_triggered"], int(predictions["target"])
    if single_label_predictions(predictions):
        from medbackdoor.metrics.singlelabel import _backdoor_rows, class_indices

        classes = class_indices(y)
        all_to_all = "label" in predictions and str(predictions["label"]) == "all-to-all"
        rows, aim = _backdoor_rows(classes, t, all_to_all)
        if all_to_all:
            aim = aim % s.shape[1]
        return rows & (np.asarray(s).argmax(1) == aim)
    hit = s[:, t] > p if strict else s[:, t] >= p
    mask = (y[:, t] == 0) & hit
    if "condition" in predictions:
        mask &= np.asarray(predictions["condition"], bool)
    return mask


def _asr_metric(config: dict, single: bool = False) -> tuple[str, float, bool]:
    """The ASR column a cell is judged on: ``asr_{p}`` at the first threshold (multi-label), ``asr`` (single)."""
    p = float((config.get("eval.thresholds") or [0.6])[0])
    return ("asr" if single else f"asr_{p:g}"), p, bool(config.get("eval.strict", False))


def _control_asr(control: dict, key: str, single: bool) -> float:
    """The clean control's ASR in a ``control.json``: a number (single-label) or one per threshold."""
    value = control.get("asr")
    return _num(value) if single else _num((value or {}).get(key))


def _metrics_row(folder: Path, epoch: int) -> dict:
    for row in RunDir(folder).metrics():
        if int(row["epoch"]) == int(epoch):
            return row
    return {}


def _num(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _control(folder: Path, path: Path | None = None) -> dict:
    path = RunDir(folder).control_path if path is None else path
    return json.loads(path.read_text()) if path.is_file() else {}


def clean_model_summary(folder: Path, name: str) -> DefenseSummary | None:
    path = RunDir(folder).clean_model_dir(name) / "summary.json"
    return read_summary(path) if path.is_file() else None


def _input_numbers(folder: Path, fires: np.ndarray, rows: np.ndarray) -> dict:
    """AUROC, TPR and FPR of an input defense's scores (its ``scores.csv`` in ``folder``) on the firing triggered
    rows against every clean row."""
    path = folder / "scores.csv"
    if not path.is_file():
        return {}
    df = pd.read_csv(path)
    position = {int(r): i for i, r in enumerate(rows)}
    clean = df[df["set"] == "clean"]
    trig = df[df["set"] == "triggered"]
    keep = np.array([fires[position[int(r)]] if int(r) in position else False for r in trig["test_row"]], bool)
    trig = trig[keep]
    y = np.r_[np.zeros(len(clean), bool), np.ones(len(trig), bool)]
    det = detection_summary(y, np.r_[clean["score"].to_numpy(float), trig["score"].to_numpy(float)],
                            np.r_[clean["flagged"].astype(bool).to_numpy(), trig["flagged"].astype(bool).to_numpy()])
    return {"auroc": det["auroc"], "tpr": det.get("recall", math.nan), "fpr": det.get("false_positive_rate", math.nan),
            "firing": int(len(trig))}


def seed_row(record: RunRecord, path: Path) -> dict:
    """The numbers of one defense summary of one run (one seed)."""
    folder = record.folder
    s = read_summary(path)
    metrics = _metrics_row(folder, s.epoch)
    pred_path = RunDir(folder).predictions_path(s.epoch)
    pred = RunDir(folder).load_predictions(s.epoch) if pred_path.is_file() else None
    single = RunDir(folder).single_label()
    metric, p, strict = _asr_metric(record.config, single)
    quality = "auroc_macro" if single else "auroc_nn"  # the clean test set's quality a repair must keep
    control = _control(folder)
    key = metric.removeprefix("asr_")
    row = {"run": record.name, "defense": s.name, "kind": s.kind, "method": s.method,
           "defaults_digest": s.defaults_digest or "unrecorded",
           "asr": _num(metrics.get(metric)),
           "asr_clean_model": _control_asr(control, key, single) if control else math.nan,
           "fpr_nominal": _num((s.options or {}).get("fpr"))}
    if s.kind == "input" and pred is not None:
        fires = firing_mask(pred, p, strict)
        rows = pred["rows"] if "rows" in pred else np.arange(len(fires))
        row.update(_input_numbers(path.parent, fires, rows))
        base = clean_model_summary(folder, s.name)
        if base is not None:
            row["auroc_clean_model"] = _input_numbers(RunDir(folder).clean_model_dir(s.name), fires,
                                                      rows).get("auroc", math.nan)
    if s.kind == "data" or (s.kind == "mitigation" and s.detection):
        det = s.detection or {}
        row.update({"auroc": _num(det.get("auroc")), "tpr": _num(det.get("recall")),
                    "fpr": _num(det.get("false_positive_rate")),
                    "cross_flagged": _num((s.cross_samples or {}).get("flagged_rate"))})
    if s.kind == "model":
        row["tpr"] = float(bool(s.backdoored_verdict))
    if pred is not None and s.kind != "mitigation":
        row["auroc_macro"] = (auroc_macro(pred["y_true"], pred["score_clean"]) if single
                              else mean_auroc(pred["y_true"], pred["score_clean"]))
    before, after, control_after, mitigated = None, None, math.nan, False
    if s.kind == "mitigation" and s.before and s.after:
        before, after = s.before, s.after
        base = clean_model_summary(folder, s.name)
        if base is not None and base.after:
            control_after, mitigated = _num(base.after.get(metric)), True
        row["auroc_macro"] = _num(after.get("auroc_macro" if single else "auroc_nn_macro"))
    elif s.retrain is not None:
        before, after = s.retrain.get("before") or {}, s.retrain["after"]
        retrained = _control(folder, RunDir(folder).retrain_control_path(s.name))
        if retrained:
            control_after, mitigated = _control_asr(retrained, key, single), True
    if after is not None:
        if not mitigated:
            control_after = row["asr_clean_model"]
        a, b = _num(after.get(metric)), _num(before.get(metric, row["asr"]))
        row.update({"asr_after": a, "d_asr": a - b, "control_after": control_after, "control_mitigated": mitigated,
                    "excess_after": a - control_after,
                    "d_auroc_nn": _num(after.get(quality)) - _num(before.get(quality)),
                    "der": der(b, a, _num(before.get(quality)), _num(after.get(quality)),
                               row["asr_clean_model"], control_after)})
    return row


def seed_rows(records: list[RunRecord]) -> pd.DataFrame:
    """One row per (poisoned run, defense): :func:`seed_row` with the run's attack columns."""
    rows = []
    for r in records:
        c = r.config
        if not c.get("trigger.fraction"):
            continue
        attack = {"trigger": c.get("trigger.kind"), "setting": trigger_setting(c), "label": c.get("trigger.label"),
                  "target": c.get("trigger.target"),
                  "fraction": c.get("trigger.fraction"), "model": c.get("model.arch"), "dataset": c.get("dataset.name"),
                  "seed": c.get("train.seed"), "condition": _condition_key(c)}
        for path in RunDir(r.folder).defense_summary_paths():
            rows.append({**attack, **seed_row(r, path)})
    return pd.DataFrame(rows)


def trigger_setting(config: dict) -> str:
    """The trigger's own settings a run sets (``size``, ``location``, ``value`` and its ``options``), as
    ``key=value`` pairs; ``""`` when it runs at the trigger's defaults."""
    keys = [f"trigger.{k}" for k in ("size", "location", "value")]
    keys += sorted(k for k in config if k.startswith("trigger.options."))
    return " ".join(f"{k.rsplit('.', 1)[1]}={config[k]}" for k in keys if config.get(k) is not None)


def _condition_key(config: dict) -> str:
    from medbackdoor.report.aggregate import condition_of

    return json.dumps(condition_of(config), sort_keys=True, default=str)


def clean_flag_rate(records: list[RunRecord]) -> dict[str, float]:
    """Per model defense: the share of clean controls it flags as backdoored."""
    out: dict[str, list[float]] = {}
    for r in records:
        if r.config.get("trigger.fraction"):
            continue
        for path in RunDir(r.folder).defense_summary_paths():
            s = read_summary(path)
            if s.kind == "model":
                out.setdefault(s.name, []).append(float(bool(s.backdoored_verdict)))
    return {k: float(np.mean(v)) for k, v in out.items()}


def scorecard(records: list[RunRecord]) -> pd.DataFrame:
    """The scorecard: :data:`COLUMNS`, one row per (attack condition, defense)."""
    df = seed_rows(records)
    if df.empty:
        return pd.DataFrame(columns=COLUMNS)
    clean_flags = clean_flag_rate(records)
    out = []
    for (_, defense), g in df.groupby(["condition", "defense"], sort=False):
        first = g.iloc[0]
        row = {k: first[k] for k in ("trigger", "setting", "label", "target", "fraction", "model", "dataset", "defense",
                                     "kind")}
        row["seeds"] = int(g["seed"].nunique())
        asr_m, asr_lo, asr_hi = interval(g["asr"])
        base = _mean(g, "asr_clean_model")
        gap = _mean_of(g["asr"] - g["asr_clean_model"]) if "asr_clean_model" in g else math.nan
        row.update(asr=asr_m, asr_lo=asr_lo, asr_hi=asr_hi, asr_clean_model=base,
                   implanted=bool(np.isfinite(gap) and gap >= RULES["implant_margin"]))
        row["auroc"], row["auroc_lo"], row["auroc_hi"] = interval(_col(g, "auroc"))
        row["auroc_clean_model"] = _mean(g, "auroc_clean_model")
        row["detects"] = (bool(row["auroc"] - row["auroc_clean_model"] >= RULES["detect_margin"])
                          if row["kind"] == "input" and np.isfinite(row["auroc_clean_model"]) else math.nan)
        for k in ("auroc_macro", "tpr", "fpr", "fpr_nominal", "cross_flagged", "firing", "d_asr", "control_after",
                  "excess_after", "der"):
            row[k] = _mean(g, k)
        if row["kind"] == "model":
            row["fpr"] = clean_flags.get(defense, math.nan)
        row["asr_after"], row["asr_after_lo"], row["asr_after_hi"] = interval(_col(g, "asr_after"))
        row["d_auroc_nn"], row["d_auroc_nn_lo"], row["d_auroc_nn_hi"] = interval(_col(g, "d_auroc_nn"))
        row["control_mitigated"] = (bool(g["control_mitigated"].fillna(False).astype(bool).all())
                                    if "control_mitigated" in g and g["control_mitigated"].notna().any() else math.nan)
        row["meets_target"] = meets_target(row)
        digests = sorted(set(g["defaults_digest"]))
        row["defaults_digest"] = digests[0] if len(digests) == 1 else "mixed: " + " ".join(digests)
        out.append(row)
    return pd.DataFrame(out, columns=COLUMNS)


def meets_target(row: dict) -> float:
    """Whether a row meets its kind's benchmark target (:data:`RULES`): NaN where the attack did not implant or
    the kind has no target; a repair row is judged on its ASR excess after and ΔAUROC-NN."""
    if not row["implanted"]:
        return math.nan
    kind = row["kind"]
    if kind == "data" and np.isfinite(row["auroc"]):
        return bool(row["auroc"] >= RULES["target_data_auroc"])
    if kind == "input" and np.isfinite(row["auroc"]):
        return bool(row["auroc"] >= RULES["target_input_auroc"] and row["detects"] is True
                    and row["tpr"] >= RULES["target_input_tpr"] and row["fpr"] <= RULES["target_input_fpr"])
    if kind == "mitigation" and np.isfinite(row["excess_after"]):
        return bool(row["excess_after"] <= RULES["target_repair_excess"]
                    and row["d_auroc_nn"] >= RULES["target_repair_d_auroc_nn"])
    return math.nan


def _col(g: pd.DataFrame, name: str) -> list[float]:
    return pd.to_numeric(g[name], errors="coerce").tolist() if name in g else []


def _mean(g: pd.DataFrame, name: str) -> float:
    return _mean_of(g[name]) if name in g else math.nan


def _mean_of(values) -> float:
    v = pd.to_numeric(pd.Series(values), errors="coerce").dropna()
    return float(v.mean()) if len(v) else math.nan


# --- scorecard.md -----------------------------------------------------------------------------------------------

def _f(value, digits: int = 3) -> str:
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    v = _num(value)
    return "–" if not np.isfinite(v) else f"{v:.{digits}f}"


def _ci(row, name: str) -> str:
    m, lo, hi = row[name], row[f"{name}_lo"], row[f"{name}_hi"]
    if not np.isfinite(_num(m)):
        return "–"
    return f"{_f(m)} [{_f(lo)}, {_f(hi)}]" if np.isfinite(_num(lo)) else _f(m)


def attack_name(row) -> str:
    setting = row.get("setting")
    setting = f" {setting}" if isinstance(setting, str) and setting else ""
    return f"{row['trigger']}{setting} ({row['label']}) → {row['target']}, ρ={_num(row['fraction']):g}"


def scorecard_markdown(df: pd.DataFrame, command: str = "medbackdoor report SWEEP") -> str:
    """The leaderboard, the attacks (implanted or not) and, per kind, the implanted cells by defense."""
    lines = ["# Scorecard", "", f"Made by `{command}` from `report/scorecard.csv`. Means over seeds; in brackets "
             f"the {RULES['interval']}. Rules: an attack implanted when its ASR exceeds the clean model's under the "
             f"same trigger by ≥ {RULES['implant_margin']} (mean over seeds); an input detector detects the backdoor "
             f"where its AUROC beats the same detector on the clean model by ≥ {RULES['detect_margin']}. Only "
             "declared defaults; nothing here was picked with the truth.", ""]
    if df.empty:
        return "\n".join(lines + ["No poisoned run with a defense summary."]) + "\n"
    digests = sorted(set(df["defaults_digest"]))
    lines += [f"Defaults digest: {', '.join(f'`{d}`' for d in digests)}", "", "## Attacks", "",
              "| attack | seeds | ASR | clean model's ASR | implanted |", "|---|---|---|---|---|"]
    attacks = df.drop_duplicates(["trigger", "setting", "label", "target", "fraction", "model", "dataset"])
    for _, r in attacks.iterrows():
        lines.append(f"| {attack_name(r)} | {r['seeds']} | {_ci(r, 'asr')} | {_f(r['asr_clean_model'])} | "
                     f"{_f(r['implanted'])} |")
    lines += ["", "## Leaderboard (implanted cells only)", "",
              "| defense | kind | cells | target met | mean AUROC | mean ASR after | mean ΔAUROC-NN |",
              "|---|---|---|---|---|---|---|"]
    imp = df[df["implanted"]]
    for (defense, kind), g in imp.groupby(["defense", "kind"], sort=False):
        met = pd.to_numeric(g["meets_target"], errors="coerce")
        means = " | ".join(_f(_mean_of(g[c])) for c in ("auroc", "asr_after", "d_auroc_nn"))
        lines.append(f"| {defense} | {kind} | {len(g)} | {int(np.nansum(met))}/{int(met.notna().sum())} | {means} |")
    for kind, head, cols in (
            ("data", "Data defenses: poisoned training samples",
             ("auroc", "tpr", "fpr", "fpr_nominal", "cross_flagged")),
            ("input", "Input defenses: triggered images where the backdoor fires",
             ("auroc", "auroc_clean_model", "detects", "tpr", "fpr", "fpr_nominal", "firing")),
            ("model", "Model scanning: backdoored runs flagged (tpr), clean controls flagged (fpr)", ("tpr", "fpr")),
            ("mitigation", "Repairs", ("asr_after", "d_asr", "control_after", "control_mitigated", "excess_after",
                                       "d_auroc_nn", "auroc_macro", "der"))):
        part = imp[imp["kind"] == kind]
        if part.empty:
            continue
        lines += ["", f"## {head}", "", "| attack | defense | " + " | ".join(cols) + " | target met |",
                  "|---|---|" + "---|" * (len(cols) + 1)]
        for _, r in part.iterrows():
            cells = [_ci(r, c) if f"{c}_lo" in r else _f(r[c], 1 if c == "firing" else 3) for c in cols]
            lines.append(f"| {attack_name(r)} | {r['defense']} | {' | '.join(cells)} | {_f(r['meets_target'])} |")
    retrain = imp[(imp["kind"] == "data") & imp["asr_after"].notna()]
    if not retrain.empty:
        lines += ["", "## Cleanse and retrain", "",
                  "| attack | defense | ASR after | control after | ΔAUROC-NN | DER |", "|---|---|---|---|---|---|"]
        for _, r in retrain.iterrows():
            lines.append(f"| {attack_name(r)} | {r['defense']} | {_ci(r, 'asr_after')} | {_f(r['control_after'])} | "
                         f"{_ci(r, 'd_auroc_nn')} | {_f(r['der'])} |")
    return "\n".join(lines) + "\n"


def write_scorecard(records: list[RunRecord], folder: Path, command: str = "medbackdoor report SWEEP") -> pd.DataFrame:
    """``folder/scorecard.csv`` and ``folder/scorecard.md``; returns the table."""
    from medbackdoor._io import atomic_path, write_text

    df = scorecard(records)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "scorecard.csv", suffix=".csv") as tmp:
        df.to_csv(tmp, index=False)
    write_text(folder / "scorecard.md", scorecard_markdown(df, command))
    return df


PAGE_BEGIN, PAGE_END = "<!-- scorecard:begin -->", "<!-- scorecard:end -->"


def write_page(page: Path, scorecard_md: str) -> None:
    """Put ``scorecard_md`` (its headings one level down) between the page's :data:`PAGE_BEGIN` and
    :data:`PAGE_END` markers, leaving the rest of the page as it is.

    Raises:
        UserError: the page is missing or lacks the two markers in order.
    """
    from medbackdoor._io import write_text
    from medbackdoor.errors import UserError

    if not page.is_file():
        raise UserError(f"{page} does not exist")
    text = page.read_text()
    begin, end = text.find(PAGE_BEGIN), text.find(PAGE_END)
    if begin < 0 or end < begin:
        raise UserError(f"{page} lacks the markers {PAGE_BEGIN} ... {PAGE_END} that say where the scorecard goes")
    body = "\n".join("#" + line if line.startswith("#") else line for line in scorecard_md.splitlines())
    write_text(page, text[:begin + len(PAGE_BEGIN)] + "\n" + body + "\n" + text[end:])
