"""``medbackdoor summary RUN_DIR ...``: min and max over epochs of each run's metrics, side by side."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from medbackdoor.config import flatten
from medbackdoor.metrics.columns import SINGLE_LABEL
from medbackdoor.report.aggregate import table_rows
from medbackdoor.rundir import RunDir


def add_parser(sub) -> None:
    p = sub.add_parser("summary", help="max (and min) over epochs of each run's metrics, side by side")
    p.add_argument("runs", nargs="+", type=Path, help="run folders")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    table = {str(folder): RunDir(folder).extremes() for folder in args.runs}
    # a single-label run's metrics.csv has its own columns (accuracy, ..., ASR and R-Acc by argmax)
    single = {str(folder) for folder in args.runs if RunDir(folder).single_label()}
    multi = [folder for folder in args.runs if str(folder) not in single]
    rows = table_rows([flatten(RunDir(folder).config().to_dict()) for folder in multi]) if multi else ()
    if single:
        rows = (*rows, *((c.name, c.label) for c in SINGLE_LABEL if c.name not in dict(rows)))
    if args.json:
        print(json.dumps(table, indent=2))
        return 0
    names = [Path(k).name for k in table]
    width = max(12, *(len(n) for n in names))
    print(f"{'max over epochs':<16}" + "".join(f"{n:>{width + 2}}" for n in names))
    for key, label in rows:
        cells = "".join(f"{table[k].get(key, {}).get('max', float('nan')):>{width + 2}.3f}" for k in table)
        print(f"{label:<16}{cells}")
    print(f"{'min over epochs':<16}")
    for key, label in rows:
        cells = "".join(f"{table[k].get(key, {}).get('min', float('nan')):>{width + 2}.3f}" for k in table)
        print(f"{label:<16}{cells}")
    return 0
