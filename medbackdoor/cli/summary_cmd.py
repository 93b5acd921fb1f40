"""``medbackdoor summary RUN_DIR ...``: min and max over epochs of each run's metrics, side by side."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from medbackdoor.errors import UserError

ROWS = (("asr_0.6", "ASR(p=0.6)"), ("asr_0.9", "ASR(p=0.9)"), ("auroc_tt", "AUROC-TT"), ("auroc_nn", "AUROC-NN"),
        ("auroc_tn", "AUROC-TN"))


def add_parser(sub) -> None:
    p = sub.add_parser("summary", help="max (and min) over epochs of each run's metrics, side by side")
    p.add_argument("runs", nargs="+", type=Path, help="run folders")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run_extremes(folder: Path) -> dict[str, dict[str, float]]:
    """``{metric: {"min": x, "max": y}}`` over the epochs in ``folder/metrics.csv``."""
    path = folder / "metrics.csv"
    if not path.is_file():
        raise UserError(f"{folder} is not a run folder (no metrics.csv)")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise UserError(f"{path} has no epochs yet")
    out = {}
    for key in rows[0]:
        values = [float(r[key]) for r in rows if r[key] not in ("", "nan")]
        if values:
            out[key] = {"min": min(values), "max": max(values)}
    return out


def run(args: argparse.Namespace) -> int:
    table = {str(folder): run_extremes(folder) for folder in args.runs}
    if args.json:
        print(json.dumps(table, indent=2))
        return 0
    names = [Path(k).name for k in table]
    width = max(12, *(len(n) for n in names))
    print(f"{'max over epochs':<16}" + "".join(f"{n:>{width + 2}}" for n in names))
    for key, label in ROWS:
        cells = "".join(f"{table[k].get(key, {}).get('max', float('nan')):>{width + 2}.3f}" for k in table)
        print(f"{label:<16}{cells}")
    print(f"{'min over epochs':<16}")
    for key, label in ROWS:
        cells = "".join(f"{table[k].get(key, {}).get('min', float('nan')):>{width + 2}.3f}" for k in table)
        print(f"{label:<16}{cells}")
    return 0
