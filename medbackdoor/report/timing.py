"""Where a sweep's time went, read from its run folders: every training, defense, clean-model baseline and retrain.

Each piece of work records its own seconds beside its result, so a sweep stopped and resumed across sessions still
adds up:

- a training (a run, a cleanse-and-retrain, a clean control's random-drop retrain): its ``manifest.json``
  ``timings``, the data preparation plus every epoch (each epoch's scoring included);
- a defense: its summary's ``timings.defense_seconds``, its own time inside the defense process;
- the defense process around the defenses (the materials written for it, its start-up, what its defenses share),
  once per process, as ``defense overhead``: the process's seconds less its defenses' own;
- a clean-model baseline: one process on a clean control answers for every run it controls (``runs_sharing``);
  its seconds are split evenly between those runs, so each is counted once in the totals.

These are seconds of work, one worker each. A sweep's wall clock is not in the folders (it may have run in several
sittings); with ``--jobs J`` workers kept busy, it is about the total over J.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from medbackdoor.defenses.summary import DefenseSummary, read_summary
from medbackdoor.rundir import RunDir

STEPS = ("training", "defense", "defense overhead", "clean-model", "clean-model overhead", "cleanse retrain",
         "random-drop retrain")
ROW_COLUMNS = ["step", "run", "name", "seconds"]


def training_seconds(folder: str | Path) -> float | None:
    """A run folder's training time: ``data_seconds`` plus every recorded epoch's ``seconds``; None without a
    manifest or an epoch."""
    timings = RunDir(folder).manifest().timings or {}
    epochs = [float(e.get("seconds", np.nan)) for e in (timings.get("epochs") or {}).values()]
    if not epochs:
        return None
    return float(timings.get("data_seconds", 0.0)) + float(np.nansum(epochs))


def _defense_rows(run: Path, summaries: list[DefenseSummary], step: str) -> list[dict]:
    """One row per summary (its own seconds) and one overhead row per defense process; a process is known by its
    recorded ``child_seconds`` and ``materials_seconds``, which every summary it wrote repeats."""
    rows, processes = [], {}
    for summary in summaries:
        timings = summary.timings or {}
        share = max(int(timings.get("runs_sharing", 1) or 1), 1)
        own = timings.get("defense_seconds", summary.seconds)
        if own is None:
            continue
        rows.append({"step": step, "run": run.name, "name": summary.name, "seconds": float(own) / share})
        if "child_seconds" in timings:
            key = (timings["child_seconds"], timings.get("materials_seconds", 0.0))
            whole = float(timings["child_seconds"]) + float(timings.get("materials_seconds", 0.0))
            processes.setdefault(key, [whole / share, 0.0])[1] += float(own) / share
    rows += [{"step": f"{step} overhead", "run": run.name, "name": "", "seconds": max(whole - own, 0.0)}
             for whole, own in processes.values()]
    return rows


def time_rows(folders: list[str | Path]) -> pd.DataFrame:
    """Every recorded piece of work under the run ``folders``: columns :data:`ROW_COLUMNS`, ``step`` one of
    :data:`STEPS`, ``name`` the defense (or ``random-drop-N``; empty for a run's own training)."""
    rows = []
    for folder in map(Path, folders):
        run = RunDir(folder)
        seconds = training_seconds(folder)
        if seconds is not None:
            rows.append({"step": "training", "run": folder.name, "name": "", "seconds": seconds})
        if not run.defenses_dir.is_dir():
            continue
        summaries = run.defense_summary_paths()
        rows += _defense_rows(folder, [read_summary(p) for p in summaries], "defense")
        baselines = sorted(run.defenses_dir.glob("*/clean-model/summary.json"))
        rows += _defense_rows(folder, [read_summary(p) for p in baselines], "clean-model")
        for path in summaries:
            seconds = training_seconds(run.retrain_dir(path.parent.name).path)
            if seconds is not None:
                rows.append({"step": "cleanse retrain", "run": folder.name, "name": path.parent.name,
                             "seconds": seconds})
        for drop in sorted(run.defenses_dir.glob("random-drop-*/retrain")):
            seconds = training_seconds(drop)
            if seconds is not None:
                rows.append({"step": "random-drop retrain", "run": folder.name, "name": drop.parent.name,
                             "seconds": seconds})
    return pd.DataFrame(rows, columns=ROW_COLUMNS)


def time_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per step, and per defense within the defense steps: how many pieces, their median, least and most seconds,
    and their total in hours; the steps in :data:`STEPS` order, a step's defenses by total, most first."""
    if rows.empty:
        return pd.DataFrame(columns=["step", "name", "count", "median_s", "min_s", "max_s", "total_h"])
    named = rows["step"].isin(["defense", "clean-model"])
    keyed = rows.assign(name=rows["name"].where(named, ""))
    table = (keyed.groupby(["step", "name"])["seconds"]
             .agg(count="count", median_s="median", min_s="min", max_s="max", total_h="sum").reset_index())
    table["total_h"] = table["total_h"] / 3600.0
    order = {s: i for i, s in enumerate(STEPS)}
    table["_step"] = table["step"].map(lambda s: order.get(s, len(order)))
    table = table.sort_values(["_step", "total_h"], ascending=[True, False]).drop(columns="_step")
    return table.reset_index(drop=True)


def time_section(rows: pd.DataFrame) -> list[str]:
    """Markdown lines: the total work, then :func:`time_table`."""
    if rows.empty:
        return []
    table = time_table(rows)
    steps = rows.groupby("step")["seconds"].sum() / 3600.0
    lines = ["| step | defense | count | median s | min s | max s | total h |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r.step} | {r.name or '–'} | {r.count} | {r.median_s:.0f} | {r.min_s:.0f} | {r.max_s:.0f} | "
              f"{r.total_h:.2f} |" for r in table.itertuples()]
    total = float(steps.sum())
    text = (f"{total:.2f} h of work in all, one worker each (" + ", ".join(f"{s} {steps[s]:.2f} h" for s in STEPS
                                                                      if s in steps) + "). With `--jobs J` "
            "workers kept busy, the wall time is about the total over J.")
    return [text, "", *lines]
