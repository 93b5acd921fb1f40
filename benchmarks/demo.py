"""Wall time of each ``make demo`` step, with an empty cache, against the demo's budget.

Runs the commands ``make -n demo`` prints (the venv must exist: ``make .venv/.installed``), each timed on its own,
into a fresh output folder and a fresh preprocessing cache (``MEDBACKDOOR_CACHE``), so nothing from an earlier
demo is reused. Prints one row per step and the total as a share of the budget (15 minutes) and of the margin
the project keeps on this machine (12 minutes), so that slower machines of the same kind stay inside the budget.

Usage: ``python benchmarks/demo.py [--budget 900] [--margin 720] [--keep DIR]``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def demo_commands(out: Path) -> list[str]:
    """The shell commands of ``make demo`` with ``DEMO_OUT=out`` (echo lines and the venv build left out)."""
    command = ["make", "-s", "-n", "-o", ".venv/.installed", "demo", f"DEMO_OUT={out}"]
    text = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("echo")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=900.0, help="seconds (the README's 15 minutes)")
    parser.add_argument("--margin", type=float, default=720.0, help="seconds this machine should stay under")
    parser.add_argument("--keep", type=Path, default=None, help="write the demo here and keep it")
    args = parser.parse_args(argv)
    if not (ROOT / ".venv" / ".installed").is_file():
        print("benchmarks/demo.py: build the venv first (make .venv/.installed)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        out = args.keep or Path(tmp) / "demo"
        env = {**os.environ, "MEDBACKDOOR_CACHE": str(Path(tmp) / "cache")}
        rows, total = [], 0.0
        for command in demo_commands(out):
            t0 = time.perf_counter()
            done = subprocess.run(command, shell=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
            seconds = time.perf_counter() - t0
            total += seconds
            words = shlex.split(command)
            rows.append((seconds, " ".join(Path(words[0]).name.split() + words[1:4])))
            if done.returncode:
                print(f"step failed (exit {done.returncode}): {command}", file=sys.stderr)
                return 1
    for seconds, what in rows:
        print(f"{seconds:8.1f} s  {what}")
    print(f"{total:8.1f} s  total = {total / 60:.1f} min: {total / args.budget:.2f} of the budget, "
          f"{total / args.margin:.2f} of the margin")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
