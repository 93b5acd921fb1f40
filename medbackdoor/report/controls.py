"""Reading the clean controls' scoring (``RUN/control.json``, written by :mod:`medbackdoor.study.controls`) into
the report's control table."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from medbackdoor.rundir import RunDir


def control_rows(folders: list[str | Path]) -> pd.DataFrame:
    """One row per run with a ``control.json``: the control's ASR under the run's trigger, the run's own ASR at
    its last epoch, and the excess (run − control), for every threshold."""
    rows = []
    for folder in map(Path, folders):
        path = RunDir(folder).control_path
        if not path.is_file():
            continue
        c = json.loads(path.read_text())
        metrics = RunDir(folder).metrics()
        last = metrics[-1] if metrics else {}
        row = {"run": folder.name, "control": c["control"], "control_epoch": c["control_epoch"]}
        if not isinstance(c["asr"], dict):  # a single-label run: one ASR (by argmax), no threshold
            row["control_asr"] = c["asr"]
            if last.get("asr") not in (None, ""):
                row["asr"] = float(last["asr"])
                row["excess_asr"] = row["asr"] - c["asr"]
            rows.append(row)
            continue
        for p, value in c["asr"].items():
            row[f"control_asr_{p}"] = value
            if last.get(f"asr_{p}") not in (None, ""):
                row[f"asr_{p}"] = float(last[f"asr_{p}"])
                row[f"excess_asr_{p}"] = row[f"asr_{p}"] - value
        row.update({f"control_auroc_{k}": c.get(f"auroc_{k}") for k in ("tt", "tn")})
        rows.append(row)
    return pd.DataFrame(rows)


def control_table(df: pd.DataFrame, labels: dict[str, str], order: list[str]) -> pd.DataFrame:
    """Rows: for each threshold p, the runs' ASR, the clean controls' ASR under the same trigger and the excess;
    columns: attack conditions (``labels`` maps run name → condition); cells mean ± std over seeds."""
    from medbackdoor.report.defenses import _cell

    df = df.assign(condition=df["run"].map(labels))
    table = {}
    heads = []
    if "control_asr" in df:  # single-label runs: ASR by argmax, one per run
        heads.append((("ASR of the backdoored run", "asr"), ("ASR of the clean control", "control_asr"),
                      ("excess ASR", "excess_asr")))
    for p in sorted({k.removeprefix("control_asr_") for k in df.columns if k.startswith("control_asr_")}, key=float):
        heads.append(((f"ASR({p}) of the backdoored run", f"asr_{p}"), (f"ASR({p}) of the clean control",
                      f"control_asr_{p}"), (f"excess ASR({p})", f"excess_asr_{p}")))
    for group in heads:
        for head, col in group:
            if col in df:
                table[head] = {c: _cell(g[col]) for c, g in df.groupby("condition", sort=False)}
    out = pd.DataFrame(table).T
    return out[[c for c in order if c in out.columns]]
