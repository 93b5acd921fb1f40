"""``medbackdoor report``: Tables 1–3, Figure 3 and a Markdown report, from run folders alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from medbackdoor._io import atomic_path, save_figure, write_text
from medbackdoor.study import paper_values as paper
from medbackdoor.study.aggregate import TABLE_ROWS, condition_table, read_runs, runs_table

PREFERRED_SIZE = 3


def cell(mean: float, std: float) -> str:
    """``0.999 ± 0.001``; the std is "–" when there is a single seed."""
    if mean is None or not np.isfinite(mean):
        return "–"
    return f"{mean:.3f} ± {std:.3f}" if std is not None and np.isfinite(std) else f"{mean:.3f} ± –"


def _lookup(cond: pd.DataFrame, metric: str, stat: str, **where) -> tuple[float, float, int] | None:
    sel = cond[(cond.metric == metric) & (cond.stat == stat)]
    for key, value in where.items():
        sel = sel[sel[key] == value]
    if sel.empty:
        return None
    row = sel.iloc[0]
    return float(row["mean"]), float(row["std"]), int(row["n"])


def table1(cond: pd.DataFrame, stat: str) -> pd.DataFrame | None:
    """Rows: the five metrics; columns: the clean control and each fixed-location trigger size."""
    poisoned = cond[(cond.fraction > 0) & (cond.location == "center")]
    sizes = sorted(int(s) for s in poisoned["size"].dropna().unique())
    clean = cond[cond.fraction == 0]
    if not sizes:
        return None
    clean_size = PREFERRED_SIZE if (clean["size"] == PREFERRED_SIZE).any() else (
        int(clean["size"].iloc[0]) if not clean.empty else None)
    table = {}
    if clean_size is not None:
        table["Clean"] = [_fmt(_lookup(cond, m, stat, fraction=0.0, size=clean_size)) for m, _ in TABLE_ROWS]
    for s in sizes:
        table[f"{s}x{s} px"] = [_fmt(_lookup(poisoned, m, stat, size=s)) for m, _ in TABLE_ROWS]
    return pd.DataFrame(table, index=[label for _, label in TABLE_ROWS])


def _compare_size(cond: pd.DataFrame) -> int | None:
    p = cond[cond.fraction > 0]
    both = set(p[p.location == "center"]["size"]) & set(p[p.location == "random"]["size"])
    if not both:
        return None
    return PREFERRED_SIZE if PREFERRED_SIZE in both else int(sorted(both)[0])


def table2(cond: pd.DataFrame) -> pd.DataFrame | None:
    """Fixed (centre) vs random location, minimum and maximum over epochs, for one trigger size."""
    size = _compare_size(cond)
    if size is None:
        return None
    p = cond[(cond.fraction > 0) & (cond["size"] == size)]
    cols = {}
    for loc, title in (("center", "Fixed"), ("random", "Random")):
        for stat, name in (("min", "Minimum"), ("max", "Maximum")):
            cols[f"{title} {name}"] = [_fmt(_lookup(p, m, stat, location=loc)) for m, _ in TABLE_ROWS]
    return pd.DataFrame(cols, index=[label for _, label in TABLE_ROWS])


def table3(cond: pd.DataFrame) -> pd.DataFrame | None:
    """Mixed test sets: min and max over epochs of the micro AUROC with a fraction ε triggered."""
    p = cond[(cond.fraction > 0) & (cond.location == "center")]
    if p.empty:
        return None
    size = PREFERRED_SIZE if (p["size"] == PREFERRED_SIZE).any() else int(sorted(p["size"].unique())[0])
    p = p[p["size"] == size]
    eps = sorted({float(m.split("_")[-1]) for m in p.metric if m.startswith("auroc_mix_")})
    if not eps:
        return None
    rows = {name: [_fmt(_lookup(p, f"auroc_mix_{e:g}", stat)) for e in eps]
            for stat, name in (("min", "Minimum"), ("max", "Maximum"))}
    return pd.DataFrame(rows, index=[f"{e:g}" for e in eps]).T


def _fmt(found) -> str:
    return "–" if found is None else cell(found[0], found[1])


def to_markdown(df: pd.DataFrame) -> str:
    header = "| | " + " | ".join(df.columns) + " |"
    lines = [header, "|---" * (len(df.columns) + 1) + "|"]
    lines += ["| " + str(idx) + " | " + " | ".join(map(str, row)) + " |" for idx, row in zip(df.index, df.values)]
    return "\n".join(lines)


def to_latex(df: pd.DataFrame, caption: str) -> str:
    body = [" & ".join([""] + [c.replace("x", r"$\times$", 1) if "px" in c else c for c in df.columns]) + r" \\",
            r"\midrule"]
    body += [" & ".join([str(i)] + [v.replace("±", r"$\pm$") for v in row]) + r" \\"
             for i, row in zip(df.index, df.values)]
    return "\n".join([r"\begin{table}[t]", r"\centering", rf"\caption{{{caption}}}",
                      r"\begin{tabular}{l" + "c" * len(df.columns) + "}", r"\toprule", *body, r"\bottomrule",
                      r"\end{tabular}", r"\end{table}", ""])


def write_table(folder: Path, name: str, df: pd.DataFrame, caption: str) -> None:
    with atomic_path(folder / f"{name}.csv", suffix=".csv") as tmp:
        df.to_csv(tmp)
    write_text(folder / f"{name}.md", f"{caption}\n\n{to_markdown(df)}\n")
    write_text(folder / f"{name}.tex", to_latex(df, caption))


def figure3(cond: pd.DataFrame, folder: Path) -> bool:
    """ASR and AUROCs against trigger size (centre trigger): mean lines, std bands, min and max panels."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = cond[(cond.fraction > 0) & (cond.location == "center")]
    sizes = sorted(int(s) for s in p["size"].dropna().unique())
    if not sizes:
        return False
    fig, axes = plt.subplots(2, 2, figsize=(9, 6.5), sharex=True)
    groups = ((("asr_0.6", "ASR p=0.6"), ("asr_0.9", "ASR p=0.9")),
              (("auroc_tt", "AUROC-TT"), ("auroc_nn", "AUROC-NN"), ("auroc_tn", "AUROC-TN")))
    for r, (stat, title) in enumerate((("min", "minimum over epochs"), ("max", "maximum over epochs"))):
        for c, group in enumerate(groups):
            ax = axes[r, c]
            for metric, label in group:
                vals = [_lookup(p, metric, stat, size=s) for s in sizes]
                mean = np.array([v[0] if v else np.nan for v in vals])
                std = np.nan_to_num(np.array([v[1] if v else np.nan for v in vals]))
                (line,) = ax.plot(sizes, mean, marker="o", label=label)
                ax.fill_between(sizes, mean - std, mean + std, color=line.get_color(), alpha=0.2)
            ax.set_title(f"({'ab'[c]}) {'ASR' if c == 0 else 'AUROC'}, {title}", fontsize=10)
            ax.set_ylim(-0.02 if c == 0 else None, 1.02)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
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


def explain_section(records) -> list[str]:
    """Saliency localisation and detection for the runs that ``medbackdoor explain`` was run on."""
    explained = [r for r in records if (r.folder / "explain" / "localisation.csv").is_file()]
    if not explained:
        return []
    lines = ["", "## Explainability: Grad-CAM localisation and detection", "",
             "Mass in box: share of saliency inside the trigger box (dilated); pointing: the map's maximum is in "
             "the box; detector: flags triggered inputs from the map alone (top-1% mass), scored over clean vs "
             "infected test images. See each run's `explain/figure1.png`.", "",
             "| run | epoch | layer | " + " | ".join(c[2] for c in EXPLAIN_COLUMNS) + " |",
             "|---|---|---|" + "---|" * len(EXPLAIN_COLUMNS)]
    for r in explained:
        table = pd.read_csv(r.folder / "explain" / "localisation.csv")
        for (epoch, layer), part in table.groupby(["epoch", "layer"], sort=False):
            values = {(v, q): x for v, q, x in zip(part.version, part.quantity, part.value)}
            cells = [f"{values.get((v, q), float('nan')):.3f}" for v, q, _ in EXPLAIN_COLUMNS]
            lines.append(f"| {r.name} | {epoch} | {layer} | " + " | ".join(cells) + " |")
    return lines


def build_report(sweep_dir: str | Path, cuts: str | None = None) -> Path:
    """Write ``sweep_dir/report/`` from the run folders; returns the path of ``report.md``."""
    sweep_dir = Path(sweep_dir)
    folder = sweep_dir / "report"
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
    ]
    for name, caption, ours, theirs in sections:
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
    parts += ["", "## Runs and configs", "", "| run | seed | trigger | status |", "|---|---|---|---|"]
    for r in records:
        c = r.config
        parts.append(f"| {r.name} | {c.get('train.seed')} | {c.get('trigger.size')} px {c.get('trigger.location')}, "
                     f"ρ={c.get('trigger.fraction')}, {c.get('trigger.mode')}, {c.get('trigger.stage')} | complete |")
    if records:
        shared = {k: v for k, v in records[0].config.items()
                  if all(r.config.get(k) == v for r in records) and k != "train.seed"}
        parts += ["", "Config keys shared by every run:", "", "```yaml"]
        parts += [f"{k}: {v}" for k, v in sorted(shared.items())] + ["```"]
    parts += explain_section(records)
    if notes:
        parts += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    path = folder / "report.md"
    write_text(path, "\n".join(parts) + "\n")
    return path
