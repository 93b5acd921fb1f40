"""The trigger on a model that never saw it: every attack's trigger scored on the matching clean control.

ASR counts triggered test images whose target score passes p. A model trained on clean data alone can do that
too, when the trigger happens to look like a finding (a dark square, a blend pattern): its *natural response*.
Without it, a high ASR after a perfect cleanse reads as a failed defense. So for every poisoned run of a sweep,
the clean control with the same seed and settings (the same config but for ``trigger.*``) is scored on that
run's triggered test set, at its last complete epoch, with the run's own metric settings. The result is one row
per poisoned run: ``control_asr_<p>`` beside the run's own ``asr_<p>``, and ``excess_asr_<p>`` = run − control.

Rows are cached in ``report/controls_by_run.csv`` by (run, control, control epoch), so a report built again scores
only what changed. Checkpoints are loaded with ``weights_only=True``; a control without one is skipped.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from medbackdoor.config import NEUTRAL_KEYS
from medbackdoor.rundir import RunDir
from medbackdoor.study.aggregate import RunRecord

IGNORED = ("trigger.", "train.drop")


def _setting(config: dict) -> tuple:
    """What must match between a run and its control: every key but the trigger's and the neutral ones."""
    return tuple(sorted((k, repr(v)) for k, v in config.items()
                        if not k.startswith(IGNORED) and k not in NEUTRAL_KEYS))


def match_controls(records: list[RunRecord]) -> list[tuple[RunRecord, RunRecord]]:
    """(poisoned run, its clean control) pairs: same seed and settings, the control with ρ = 0."""
    controls = {_setting(r.config): r for r in records if not r.config.get("trigger.fraction")}
    return [(r, controls[_setting(r.config)]) for r in records
            if r.config.get("trigger.fraction") and _setting(r.config) in controls]


def control_response(run: RunRecord, control: RunRecord, device: str = "cpu") -> dict | None:
    """The clean control's backdoor metrics on ``run``'s triggered test set (None: the control has no
    checkpoint on disk)."""
    import torch

    from medbackdoor.metrics import backdoor_metrics
    from medbackdoor.train.data import build_test_data, build_trigger
    from medbackdoor.train.loop import pick_device, predict

    ctrl = RunDir(control.folder)
    epoch = ctrl.last_complete_epoch()
    if not epoch:
        return None
    config = RunDir(run.folder).config()
    test = build_test_data(config)
    _, target = build_trigger(config, test.label_names)
    dev = pick_device(device)
    model = ctrl.load_model(epoch, dev)
    with torch.no_grad():
        clean = predict(model, test.clean, dev, config.eval.batch_size)
        triggered = clean if test.triggered is test.clean else predict(model, test.triggered, dev,
                                                                        config.eval.batch_size)
    m = backdoor_metrics(test.labels, clean, triggered, target, config.eval.thresholds, config.eval.epsilons,
                         config.eval.strict, seed=config.attack_seed, label=config.trigger.label,
                         carriers=test.carriers)
    row = {"run": run.name, "control": control.name, "control_epoch": epoch}
    row.update({f"control_asr_{p}": v for p, v in m["asr"].items()})
    row.update({f"control_auroc_{k}": m[f"auroc_{k}"] for k in ("tt", "tn")})
    return row


def control_rows(records: list[RunRecord], folder: Path, device: str = "cpu") -> pd.DataFrame:
    """One row per poisoned run with a clean control: the control's ASR under the run's trigger, the run's own
    ASR (its last epoch) and the excess. Cached in ``folder/controls_by_run.csv``."""
    cache_path = Path(folder) / "controls_by_run.csv"
    cached = {}
    if cache_path.is_file():
        for row in pd.read_csv(cache_path).to_dict("records"):
            cached[(row["run"], row["control"], int(row["control_epoch"]))] = row
    rows = []
    for run, control in match_controls(records):
        epoch = RunDir(control.folder).last_complete_epoch()
        row = cached.get((run.name, control.name, epoch)) if epoch else None
        if row is None:
            row = control_response(run, control, device)
        if row is None:
            continue
        row = {k: v for k, v in row.items() if not k.startswith(("asr_", "excess_asr_"))}
        last = RunDir(run.folder).metrics()[-1]
        for key in [k for k in row if k.startswith("control_asr_")]:
            p = key.removeprefix("control_asr_")
            if f"asr_{p}" in last:
                row[f"asr_{p}"] = float(last[f"asr_{p}"])
                row[f"excess_asr_{p}"] = row[f"asr_{p}"] - float(row[key])
        rows.append(row)
    return pd.DataFrame(rows)


def control_table(df: pd.DataFrame, labels: dict[str, str], order: list[str]) -> pd.DataFrame:
    """Rows: for each threshold p, the runs' ASR, the clean controls' ASR under the same trigger and the excess;
    columns: attack conditions (``labels`` maps run name → condition); cells mean ± std over seeds."""
    from medbackdoor.study.defense_report import _cell

    df = df.assign(condition=df["run"].map(labels))
    table = {}
    for p in sorted({k.removeprefix("control_asr_") for k in df.columns if k.startswith("control_asr_")}, key=float):
        for head, col in ((f"ASR({p}) of the backdoored run", f"asr_{p}"),
                          (f"ASR({p}) of the clean control", f"control_asr_{p}"),
                          (f"excess ASR({p})", f"excess_asr_{p}")):
            if col in df:
                table[head] = {c: _cell(g[col]) for c, g in df.groupby("condition", sort=False)}
    out = pd.DataFrame(table).T
    return out[[c for c in order if c in out.columns]]
