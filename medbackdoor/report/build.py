"""``medbackdoor report``: Tables 1–3, Figure 3 and a Markdown report, from run folders alone.

Tables never merge conditions: every column (Tables 1 and 2) or row (Table 3) is exactly one condition, and its
label names the values of whatever else varies among the conditions the table draws from (``3x3 px, ρ=0.1``,
``Clean (4x4 px)``, ``Fixed Minimum, mode=append``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from medbackdoor._io import atomic_path, save_figure, write_text
from medbackdoor.errors import UserError
from medbackdoor.metrics.columns import SINGLE_LABEL
from medbackdoor.report import paper_values as paper
from medbackdoor.report.aggregate import (
    TABLE_ROWS,
    RunRecord,
    condition_of,
    condition_table,
    read_runs,
    runs_table,
    table_rows,
    varying_keys,
)
from medbackdoor.rundir import RunDir, SweepDir
from medbackdoor.triggers import SHARED_OPTIONS

PREFERRED_SIZE = 3
SIZE, LOCATION, FRACTION = "trigger.size", "trigger.location", "trigger.fraction"
# Keys named first in a label, in this order; the others follow alphabetically.
LABEL_ORDER = (SIZE, LOCATION, FRACTION, "trigger.mode", "trigger.stage")

# A column of a table: (label, condition id as in ``condition_table``, stat).
Column = tuple[str, str, str]


def cell(mean: float, std: float) -> str:
    """``0.999 ± 0.001``; the std is "–" when there is a single seed."""
    if mean is None or not np.isfinite(mean):
        return "–"
    return f"{mean:.3f} ± {std:.3f}" if std is not None and np.isfinite(std) else f"{mean:.3f} ± –"


def lookup(cond: pd.DataFrame, metric: str, stat: str, **where) -> tuple[float, float, int] | None:
    """Mean, std and seed count of ``metric`` (``stat`` over epochs) for the one condition matching ``where``.

    Args:
        cond: the output of :func:`condition_table`.
        metric: e.g. ``asr_0.6``.
        stat: ``min`` or ``max``.
        **where: column → value; ``condition=ID`` selects one exact condition. Dotted columns go through a dict,
            e.g. ``**{"trigger.mode": "append"}``.

    Returns:
        ``(mean, std, n)``, or None when no condition matches.

    Raises:
        UserError: when more than one condition matches (a cell never mixes conditions).
    """
    sel = cond[(cond.metric == metric) & (cond.stat == stat)]
    for key, value in where.items():
        sel = sel[sel[key] == value]
    if sel.empty:
        return None
    ids = list(sel["condition"].unique())
    if len(ids) > 1:
        differ = ", ".join(varying_keys([json.loads(i) for i in ids]))
        raise UserError(f"{metric} ({stat}) where {where} matches {len(ids)} conditions that differ in {differ}; "
                        "a table cell must name one condition")
    row = sel.iloc[0]
    return float(row["mean"]), float(row["std"]), int(row["n"])


def _conditions(cond: pd.DataFrame) -> dict[str, dict]:
    """Each condition id of ``cond`` mapped to its config values (dotted keys)."""
    return {cid: json.loads(cid) for cid in cond["condition"].unique()}


def _set_by_kind(values: list[dict], key: str) -> bool:
    """Whether ``key`` is a shared trigger option (``trigger.size`` …) with one value per ``trigger.kind`` among
    ``values``: each kind at its own default, so the kind already names it."""
    if key not in {f"trigger.{k}" for k in SHARED_OPTIONS}:
        return False
    seen: dict[str, set[str]] = {}
    for v in values:
        seen.setdefault(str(v.get("trigger.kind")), set()).add(json.dumps(v.get(key), default=str))
    return all(len(s) == 1 for s in seen.values())


def _label_keys(values: list[dict], skip: tuple[str, ...] = ()) -> list[str]:
    """The keys that vary among ``values`` (less ``skip``, and less a shared trigger option that only follows the
    kind), in label order."""
    keys = [k for k in varying_keys(values) if k not in skip and not _set_by_kind(values, k)]
    return sorted(keys, key=lambda k: (LABEL_ORDER.index(k) if k in LABEL_ORDER else len(LABEL_ORDER), k))


def _sortable(value) -> tuple:
    """A sort key that orders numbers numerically, then text, then None."""
    if value is None:
        return (2, 0.0, "")
    if isinstance(value, (bool, int, float)):
        return (0, float(value), "")
    return (1, 0.0, json.dumps(value, sort_keys=True))


def _ordered(conds: dict[str, dict], keys: list[str]) -> list[str]:
    """The condition ids of ``conds``, ordered by their values of ``keys``."""
    return sorted(conds, key=lambda cid: tuple(_sortable(conds[cid].get(k)) for k in keys))


def describe(values: dict, keys: list[str]) -> str:
    """``3x3 px, ρ=0.1, mode=append``: the values of ``keys`` in short form.

    Args:
        values: a condition (dotted key → value).
        keys: which keys to name. ``trigger.size`` reads ``3x3 px`` and ``trigger.fraction`` ``ρ=0.1``; any other
            key reads ``name=value`` with the last dotted part as name (the whole key if that part is ambiguous).
    """
    last = [k.rsplit(".", 1)[-1] for k in keys]
    parts = []
    for key, name in zip(keys, last):
        value = values.get(key)
        if key == SIZE:
            parts.append(f"{value}x{value} px")
        elif key == FRACTION:
            parts.append(f"ρ={value}")
        else:
            parts.append(f"{name if last.count(name) == 1 else key}={value}")
    return ", ".join(parts)


def _suffixed(head: str, values: dict, keys: list[str]) -> str:
    """``head`` followed by ``, `` and the values of ``keys`` when there are any."""
    return f"{head}, {describe(values, keys)}" if keys else head


def _frame(cond: pd.DataFrame, columns: list[Column]) -> pd.DataFrame:
    """Rows: the five metrics; one column per (label, condition, stat).

    Raises:
        UserError: when two columns share a label (they would merge).
    """
    labels = [label for label, _, _ in columns]
    if len(set(labels)) != len(labels):
        raise UserError(f"two table columns would share a label: {labels}")
    rows = _rows(cond)
    return pd.DataFrame({label: [_fmt(lookup(cond, m, stat, condition=cid)) for m, _ in rows]
                         for label, cid, stat in columns}, index=[label for _, label in rows])


def _rows(cond: pd.DataFrame) -> tuple[tuple[str, str], ...]:
    """The metric rows of the conditions in ``cond``: the multi-label conditions' evaluation settings' table
    columns (ASR at each p, AUROC-TT/NN/TN), then, where a condition's runs are single-label (they record
    ``racc``), the single-label columns (:data:`~medbackdoor.metrics.columns.SINGLE_LABEL`)."""
    conds = _conditions(cond)
    single = set(cond.loc[cond["metric"] == "racc", "condition"])
    multi = [v for cid, v in conds.items() if cid not in single]
    rows = table_rows(multi) if multi or not single else ()
    return (*rows, *((c.name, c.label) for c in SINGLE_LABEL)) if single else rows


def _poisoned(conds: dict[str, dict], location: str = "center") -> dict[str, dict]:
    """The conditions with a trigger in the training data at ``location``."""
    return {cid: v for cid, v in conds.items() if v[FRACTION] > 0 and v[LOCATION] == location}


def _table1_columns(conds: dict[str, dict], stat: str) -> list[Column]:
    """The clean controls (``Clean``, or ``Clean (...)`` when several), then each fixed-location condition."""
    clean = {cid: v for cid, v in conds.items() if v[FRACTION] == 0}
    clean_keys = _label_keys(list(clean.values()))
    columns = [(f"Clean ({describe(clean[cid], clean_keys)})" if clean_keys else "Clean", cid, stat)
               for cid in _ordered(clean, clean_keys)]
    poisoned = _poisoned(conds)
    keys = [SIZE] + _label_keys(list(poisoned.values()), skip=(SIZE,))
    return columns + [(describe(poisoned[cid], keys), cid, stat) for cid in _ordered(poisoned, keys)]


def table1(cond: pd.DataFrame, stat: str) -> pd.DataFrame | None:
    """Rows: the five metrics; columns: the clean controls and each fixed-location poisoned condition."""
    conds = _conditions(cond)
    if not _poisoned(conds):
        return None
    return _frame(cond, _table1_columns(conds, stat))


STEALTH_COLUMNS = (("psnr", "PSNR (dB)"), ("ssim", "SSIM"), ("changed_pixels", "changed pixels"),
                   ("survival_train", "survival"))


def attack_table(cond: pd.DataFrame) -> pd.DataFrame | None:
    """One row per condition of a sweep over attacks (it varies ``trigger.kind`` or ``trigger.label``): the five
    backdoor metrics (maximum over epochs, like Table 1), the trigger's stealth on the test images (PSNR over the
    changed images, SSIM, share of pixels changed) and its survival through preprocessing (training images). With a
    source-specific trigger in the sweep, its ASR off the condition too (``asr_off_{p}``, maximum over epochs: the
    most the backdoor fired where it should not; "–" for the other triggers)."""
    conds = _conditions(cond)
    keys = _label_keys(list(conds.values()))
    if not {"trigger.kind", "trigger.label"} & set(keys):
        return None
    clean = [cid for cid, v in conds.items() if v[FRACTION] == 0]
    off = sorted((m for m in set(cond["metric"]) if str(m).startswith("asr_off_")),
                 key=lambda m: float(m.removeprefix("asr_off_")))
    columns = (*_rows(cond), *((m, f"ASR off the condition (p={m.removeprefix('asr_off_')})") for m in off),
               *STEALTH_COLUMNS)
    rows = {}
    for cid in _ordered(conds, keys):
        if cid in clean and len(clean) == 1:
            label = "Clean"
        else:
            label = describe(conds[cid], [k for k in keys if k != FRACTION or conds[cid][FRACTION] == 0])
        rows[label] = [_fmt(lookup(cond, metric, "max", condition=cid)) for metric, _ in columns]
    return pd.DataFrame(rows, index=[name for _, name in columns]).T


def _compare_size(conds: dict[str, dict]) -> int | None:
    """The trigger size with both fixed and random-location poisoned runs (3 when it qualifies)."""
    both = {v[SIZE] for v in _poisoned(conds).values()} & {v[SIZE] for v in _poisoned(conds, "random").values()}
    if not both:
        return None
    return PREFERRED_SIZE if PREFERRED_SIZE in both else int(sorted(both)[0])


def table2(cond: pd.DataFrame) -> pd.DataFrame | None:
    """Fixed (centre) vs random location, minimum and maximum over epochs, for one trigger size.

    One group of four columns per combination of the other keys that vary at that size and have both locations.
    """
    conds = _conditions(cond)
    size = _compare_size(conds)
    if size is None:
        return None
    at_size = {cid: v for cid, v in {**_poisoned(conds), **_poisoned(conds, "random")}.items() if v[SIZE] == size}
    keys = _label_keys(list(at_size.values()), skip=(LOCATION,))
    groups: dict[str, dict[str, str]] = {}
    for cid in _ordered(at_size, keys):
        rest = json.dumps([at_size[cid].get(k) for k in keys])
        groups.setdefault(rest, {})[at_size[cid][LOCATION]] = cid
    columns = []
    for pair in (g for g in groups.values() if len(g) == 2):
        for loc, title in (("center", "Fixed"), ("random", "Random")):
            for stat, name in (("min", "Minimum"), ("max", "Maximum")):
                columns.append((_suffixed(f"{title} {name}", at_size[pair[loc]], keys), pair[loc], stat))
    return _frame(cond, columns) if columns else None


def table3(cond: pd.DataFrame) -> pd.DataFrame | None:
    """Mixed test sets: min and max over epochs of the micro AUROC with a fraction ε triggered.

    Columns: ε; rows: ``Minimum`` and ``Maximum`` for each fixed-location condition at one trigger size (3 when
    there is one), suffixed by whatever else varies among them.
    """
    poisoned = _poisoned(_conditions(cond))
    if not poisoned:
        return None
    sizes = {v[SIZE] for v in poisoned.values()}
    size = PREFERRED_SIZE if PREFERRED_SIZE in sizes else min(sizes)
    chosen = {cid: v for cid, v in poisoned.items() if v[SIZE] == size}
    p = cond[cond.condition.isin(list(chosen))]
    eps = sorted({float(m.split("_")[-1]) for m in p.metric if m.startswith("auroc_mix_")})
    if not eps:
        return None
    keys = _label_keys(list(chosen.values()))
    rows = {_suffixed(name, chosen[cid], keys): [_fmt(lookup(p, f"auroc_mix_{e:g}", stat, condition=cid)) for e in eps]
            for cid in _ordered(chosen, keys) for stat, name in (("min", "Minimum"), ("max", "Maximum"))}
    return pd.DataFrame(rows, index=[f"{e:g}" for e in eps]).T


def _fmt(found: tuple[float, float, int] | None) -> str:
    return "–" if found is None else cell(found[0], found[1])


def to_markdown(df: pd.DataFrame) -> str:
    header = "| | " + " | ".join(df.columns) + " |"
    lines = [header, "|---" * (len(df.columns) + 1) + "|"]
    lines += ["| " + str(idx) + " | " + " | ".join(map(str, row)) + " |" for idx, row in zip(df.index, df.values)]
    return "\n".join(lines)


def _latex(text: str) -> str:
    """A table label or cell in LaTeX: ``3$\\times$3 px``, ``$\\rho$``, ``$\\pm$``, escaped underscores."""
    text = re.sub(r"(\d+)x(\d+) px", r"\1$\\times$\2 px", str(text).replace("_", r"\_"))
    return text.replace("ρ", r"$\rho$").replace("±", r"$\pm$")


def to_latex(df: pd.DataFrame, caption: str) -> str:
    body = [" & ".join([""] + [_latex(c) for c in df.columns]) + r" \\", r"\midrule"]
    body += [" & ".join([_latex(i)] + [_latex(v) for v in row]) + r" \\" for i, row in zip(df.index, df.values)]
    return "\n".join([r"\begin{table}[t]", r"\centering", rf"\caption{{{caption}}}",
                      r"\begin{tabular}{l" + "c" * len(df.columns) + "}", r"\toprule", *body, r"\bottomrule",
                      r"\end{tabular}", r"\end{table}", ""])


def write_table(folder: Path, name: str, df: pd.DataFrame, caption: str) -> None:
    with atomic_path(folder / f"{name}.csv", suffix=".csv") as tmp:
        df.to_csv(tmp)
    write_text(folder / f"{name}.md", f"{caption}\n\n{to_markdown(df)}\n")
    write_text(folder / f"{name}.tex", to_latex(df, caption))


def _size_series(conds: dict[str, dict]) -> dict[str, dict[int, str]]:
    """Fixed-location poisoned conditions as line sets: label suffix → {trigger size: condition id}.

    The suffix names what varies among those conditions besides the size (empty when nothing does).
    """
    poisoned = _poisoned(conds)
    keys = _label_keys(list(poisoned.values()), skip=(SIZE,))
    series: dict[str, dict[int, str]] = {}
    for cid in _ordered(poisoned, keys + [SIZE]):
        series.setdefault(describe(poisoned[cid], keys), {})[int(poisoned[cid][SIZE])] = cid
    return series


def figure3(cond: pd.DataFrame, folder: Path) -> bool:
    """ASR and AUROCs against trigger size (centre trigger): mean lines, std bands, min and max panels.

    One line per metric and per combination of the other keys that vary (a line style and marker each).
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = _size_series(_conditions(cond))
    if not series:
        return False
    sizes = sorted({s for line in series.values() for s in line})
    fig, axes = plt.subplots(2, 2, figsize=(9, 6.5), sharex=True)
    rows = _rows(cond)
    # left the backdoor rows (ASR at each p; a single-label run's ASR and R-Acc), right the clean task's and AUROCs
    backdoor = {c.name for c in SINGLE_LABEL if c.group != "clean"}
    groups = (tuple(r for r in rows if r[0].startswith("asr_") or r[0] in backdoor),
              tuple(r for r in rows if not (r[0].startswith("asr_") or r[0] in backdoor)))
    single = any(r[0] in backdoor for r in rows)
    titles = ("ASR, R-Acc", "AUROC, accuracy") if single else ("ASR", "AUROC")
    styles = (("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"))
    for r, (stat, title) in enumerate((("min", "minimum over epochs"), ("max", "maximum over epochs"))):
        for c, group in enumerate(groups):
            ax = axes[r, c]
            for g, (suffix, line_ids) in enumerate(series.items()):
                xs = sorted(line_ids)
                for i, (metric, label) in enumerate(group):
                    vals = [lookup(cond, metric, stat, condition=line_ids[s]) for s in xs]
                    mean = np.array([v[0] if v else np.nan for v in vals])
                    std = np.nan_to_num(np.array([v[1] if v else np.nan for v in vals]))
                    linestyle, marker = styles[g % len(styles)]
                    ax.plot(xs, mean, marker=marker, color=f"C{i}", linestyle=linestyle,
                            label=f"{label}, {suffix}" if suffix else label)
                    ax.fill_between(xs, mean - std, mean + std, color=f"C{i}", alpha=0.2)
            ax.set_title(f"({'ab'[c]}) {titles[c]}, {title}", fontsize=10)
            ax.set_ylim(-0.02 if c == 0 else None, 1.02)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8 if len(series) == 1 else 6)
    for ax in axes[1]:
        ax.set_xlabel("trigger side (px)")
        ax.set_xticks(sizes)
    fig.suptitle("Figure 3: backdoor metrics against trigger size (mean ± std over seeds)", fontsize=11)
    fig.tight_layout()
    save_figure(fig, folder, "figure3")
    plt.close(fig)
    return True


def paper_table1() -> pd.DataFrame:
    cols = {("Clean" if k == "clean" else f"{k}x{k} px"): [cell(*v[m]) for m, _ in TABLE_ROWS]
            for k, v in paper.TABLE1_MAX.items()}
    return pd.DataFrame(cols, index=[label for _, label in TABLE_ROWS])


def paper_table2() -> pd.DataFrame:
    cols = {f"{'Fixed' if loc == 'center' else 'Random'} {'Minimum' if st == 'min' else 'Maximum'}":
            [cell(*v[m]) for m, _ in TABLE_ROWS] for (loc, st), v in paper.TABLE2.items()}
    return pd.DataFrame(cols, index=[label for _, label in TABLE_ROWS])


def paper_table3() -> pd.DataFrame:
    return pd.DataFrame({f"{e:g}": [cell(*paper.TABLE3[s][e]) for s in ("min", "max")] for e in paper.TABLE3["min"]},
                        index=["Minimum", "Maximum"])


EXPLAIN_COLUMNS = (("infected", "mass_in_box", "mass in box (infected)"), ("clean", "mass_in_box", "(clean)"),
                   ("infected", "pointing_game", "pointing (infected)"), ("clean", "pointing_game", "(clean)"),
                   ("clean_vs_infected", "detector_auroc_top1pct_mass", "detector AUROC"),
                   ("clean_vs_infected", "detector_tpr_at_5pct_fpr_top1pct_mass", "TPR@5%FPR"))


def runs_section(records: list[RunRecord]) -> list[str]:
    """Markdown lines: each run with its seed and its values of the condition keys that vary, then the shared keys."""
    keys = varying_keys([condition_of(r.config) for r in records])
    lines = ["", "## Runs and configs", "", "| " + " | ".join(["run", "seed", *keys, "status"]) + " |",
             "|---" * (len(keys) + 3) + "|"]
    lines += ["| " + " | ".join([r.name, str(r.config.get("train.seed")), *(str(r.config.get(k)) for k in keys),
                                 r.status]) + " |" for r in records]
    if records:
        shared = {k: v for k, v in records[0].config.items()
                  if all(r.config.get(k) == v for r in records) and k != "train.seed"}
        lines += ["", "Config keys shared by every run:", "", "```yaml"]
        lines += [f"{k}: {v}" for k, v in sorted(shared.items())] + ["```"]
    return lines


def explain_section(records, sweep_dir: Path) -> list[str]:
    """Saliency localisation and detection for the runs that ``medbackdoor explain`` was run on.

    Includes the sweep's Figure-1 pair (``figure1/trigger`` and ``figure1/clean``) when it has one.
    """
    sweep = SweepDir(sweep_dir)
    explained = [(r.name, r.folder) for r in records]
    explained += [(SweepDir.figure_name(n), sweep.figure_run(n).path) for n in ("trigger", "clean")]
    explained = [(name, folder) for name, folder in explained if RunDir(folder).localisation_path.is_file()]
    if not explained:
        return []
    lines = ["", "## Explainability: Grad-CAM localisation and detection", ""]
    pair = sweep.figure_run("trigger")
    if pair.explain_figure_path.is_file():
        config = pair.config()
        shown = pair.explain_figure_path.relative_to(sweep.path).as_posix()
        lines += [f"![Figure 1](../{shown})", "",
                  f"Figure 1 comes from a clean/trigger pair trained for it alone (`{SweepDir.FIGURE_DIR}/`, "
                  f"{config.image_size} px, {config.train.epochs} epochs, seed 0), at a resolution where the last "
                  "layer's map is at least 4×4; its runs are not in the tables above.", ""]
    lines += ["Mass in box: share of saliency inside the trigger box (dilated); pointing: the map's maximum is in "
              "the box; detector: flags triggered inputs from the map alone (top-1% mass), scored over clean vs "
              "infected test images. See each run's `explain/figure1.png`.", "",
              "| run | epoch | layer | " + " | ".join(c[2] for c in EXPLAIN_COLUMNS) + " |",
              "|---|---|---|" + "---|" * len(EXPLAIN_COLUMNS)]
    for name, folder in explained:
        table = pd.read_csv(RunDir(folder).localisation_path)
        for (epoch, layer), part in table.groupby(["epoch", "layer"], sort=False):
            values = {(v, q): x for v, q, x in zip(part.version, part.quantity, part.value)}
            cells = [f"{values.get((v, q), float('nan')):.3f}" for v, q, _ in EXPLAIN_COLUMNS]
            lines.append(f"| {name} | {epoch} | {layer} | " + " | ".join(cells) + " |")
    return lines


def defense_section(records: list[RunRecord], folder: Path) -> list[str]:
    """The defense tables, when the runs hold ``defenses/*/summary.json`` (written by ``medbackdoor defend``)."""
    from medbackdoor.report.defenses import defense_rows, defense_tables

    df = defense_rows(records, describe, _label_keys)
    if df.empty:
        return []
    with atomic_path(folder / "defenses.csv", suffix=".csv") as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g")
    parts = ["", "## Defenses", "",
             "Every defense saw only the trained model, the training set as trained and a clean holdout; the truth "
             "(poisoned samples, triggered inputs, target) only scores it. One row per defense, one column per "
             "attack; `report/defenses.csv` holds every run."]
    for name, caption, table in defense_tables(df):
        write_table(folder, name, table, caption)
        parts += ["", f"### {caption}", "", to_markdown(table)]
    return parts


def scorecard_section(records: list[RunRecord], folder: Path, sweep_dir: Path) -> list[str]:
    """The benchmark's scorecard (``report/scorecard.csv`` and ``scorecard.md``), when poisoned runs hold defense
    summaries: one row per (attack, defense) with the benchmark's rules (:mod:`medbackdoor.report.scorecard`)."""
    from medbackdoor.report.scorecard import write_scorecard

    df = write_scorecard(records, folder, f"medbackdoor report {sweep_dir}")
    if df.empty:
        return []
    cells = df.drop_duplicates(["trigger", "setting", "label", "target", "fraction", "model", "dataset"])
    implanted = cells["implanted"]
    return ["", "## Scorecard", "",
            f"{len(df)} (attack, defense) rows over {len(implanted)} attacks, {int(implanted.sum())} of which "
            "implanted: `report/scorecard.csv`, and the leaderboard with intervals in "
            "[scorecard.md](scorecard.md)."]


def controls_section(records: list[RunRecord], folder: Path) -> list[str]:
    """The natural response: every poisoned run's trigger scored on its clean control (``RUN/control.json``,
    written by the sweep)."""
    from medbackdoor.report.controls import control_rows, control_table

    df = control_rows([r.folder for r in records])
    if df.empty:
        return []
    with atomic_path(folder / "controls_by_run.csv", suffix=".csv") as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g")
    conditions = {r.name: condition_of(r.config) for r in records}
    keys = _label_keys(list(conditions.values()))
    labels = {name: describe(c, keys) for name, c in conditions.items()}
    order = _ordered({labels[n]: conditions[n] for n in df["run"]}, keys)
    table = control_table(df, labels, order)
    caption = "The trigger on the clean control: ASR of a model that never saw it"
    write_table(folder, "controls", table, caption)
    return ["", f"## {caption}", "",
            "Each backdoored run's triggered test set, scored by the clean control of the same seed and settings "
            "(its last epoch); the backdoored run at its last epoch. A clean model can answer a trigger that looks "
            "like a finding; the excess is the backdoor's own share. `report/controls_by_run.csv` holds every "
            "run.", "", to_markdown(table)]


def time_report_section(records: list[RunRecord], folder: Path) -> list[str]:
    """Where the sweep's time went (:mod:`medbackdoor.report.timing`): ``report/time_by_task.csv`` holds every
    training, defense and retrain with its seconds, ``report/time.csv`` the table."""
    from medbackdoor.report.timing import time_rows, time_section, time_table

    rows = time_rows([r.folder for r in records])
    if rows.empty:
        return []
    with atomic_path(folder / "time_by_task.csv", suffix=".csv") as tmp:
        rows.to_csv(tmp, index=False, float_format="%.3f")
    with atomic_path(folder / "time.csv", suffix=".csv") as tmp:
        time_table(rows).to_csv(tmp, index=False, float_format="%.4g")
    return ["", "## Time", "",
            "Seconds of work recorded in the run folders: each training's epochs and data preparation, each "
            "defense's own time in its process, and the process around it (overhead). `report/time_by_task.csv` "
            "holds every piece.", "", *time_section(rows)]


def build_report(sweep_dir: str | Path, cuts: str | None = None) -> Path:
    """Write ``sweep_dir/report/`` from the run folders; returns the path of ``report.md``."""
    sweep_dir = Path(sweep_dir)
    folder = SweepDir(sweep_dir).report_dir
    folder.mkdir(parents=True, exist_ok=True)
    records, notes = read_runs(sweep_dir)
    runs = runs_table(records)
    cond = condition_table(runs)
    if not runs.empty:
        with atomic_path(folder / "runs.csv", suffix=".csv") as tmp:
            runs.drop(columns=["condition"]).to_csv(tmp, index=False, float_format="%.6g")
        with atomic_path(folder / "conditions.csv", suffix=".csv") as tmp:
            cond.to_csv(tmp, index=False, float_format="%.6g")
    parts = [f"# Backdoor study report: {sweep_dir.name}", "",
             f"{len(records)} complete runs. Every number is computed from the run folders "
             "(`runs/*/metrics.csv`): for each run the minimum and maximum over epochs, then mean ± sample "
             "standard deviation (ddof = 1) over the seeds of a condition (a condition is every config key but "
             "the seed). \"–\" marks a single seed. The paper's values (NIH ChestX-ray14, 4 seeds) are printed "
             "beside ours for reference."]
    if cuts:
        parts += ["", f"**What this protocol cut:** {cuts}"]
    sections = [
        ("table1", "Table 1: maximum over epochs by trigger size", table1(cond, "max") if not cond.empty else None,
         paper_table1()),
        ("table1_min", "Table 1 (minimum over epochs) by trigger size",
         table1(cond, "min") if not cond.empty else None, None),
        ("table2", "Table 2: fixed vs random trigger location", table2(cond) if not cond.empty else None,
         paper_table2()),
        ("table3", "Table 3: micro AUROC on mixed test sets, a fraction ε triggered",
         table3(cond) if not cond.empty else None, paper_table3()),
        ("attacks", "Attacks: backdoor metrics (max over epochs), stealth and survival by trigger and label policy",
         attack_table(cond) if not cond.empty else None, None),
    ]
    for name, caption, ours, theirs in sections:
        if ours is None and name == "attacks":
            continue  # only a sweep over attacks has this table
        parts += ["", f"## {caption}", ""]
        if ours is None:
            parts.append(f"*Skipped: the sweep has no runs for {name} (see the grid).*")
            continue
        write_table(folder, name, ours, caption)
        parts += ["Ours:", "", to_markdown(ours)]
        if theirs is not None:
            parts += ["", "Paper:", "", to_markdown(theirs)]
    parts += ["", "## Figure 3", ""]
    if not cond.empty and figure3(cond, folder):
        parts.append("![Figure 3](figure3.png)")
    else:
        parts.append("*Skipped: no poisoned runs with a fixed location.*")
    parts += controls_section(records, folder)
    parts += defense_section(records, folder)
    parts += scorecard_section(records, folder, sweep_dir)
    parts += time_report_section(records, folder)
    parts += runs_section(records)
    parts += explain_section(records, sweep_dir)
    if notes:
        parts += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    path = folder / "report.md"
    write_text(path, "\n".join(parts) + "\n")
    return path
