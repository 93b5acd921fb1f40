"""``medbackdoor sweep``, ``medbackdoor report`` and ``medbackdoor reproduce``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medbackdoor.errors import UserError
from medbackdoor.study.executors import STALL_TIMEOUT
from medbackdoor.study.sweep import builtin_sweeps


def add_parser(sub) -> None:
    p = sub.add_parser("sweep", help="run a grid of configs, one folder per run, restartable")
    p.add_argument("sweep", help="sweep YAML (base_config, base, grid) or a built-in name (quick, paper)")
    _sweep_args(p)
    p.set_defaults(func=run_sweep_cmd)
    r = sub.add_parser("report", help="Tables 1-3, Figure 3 and report.md from a sweep's run folders")
    r.add_argument("dir", type=Path, help="the sweep's --out folder")
    r.add_argument("--page", type=Path, default=None,
                   help="also write the scorecard into this Markdown page, between its <!-- scorecard:begin --> and "
                   "<!-- scorecard:end --> markers (docs/results/defenses.md)")
    r.set_defaults(func=run_report)
    q = sub.add_parser("reproduce", help="the built-in sweep for the paper's Tables 1-3, then the report")
    q.add_argument("--protocol", choices=builtin_sweeps(), default="quick", help="a built-in sweep")
    _sweep_args(q)
    q.set_defaults(func=run_reproduce)
    b = sub.add_parser("bench", help="the defense benchmark: its sweep (attacks x defenses, clean controls, "
                       "clean-model baselines), then the report and report/scorecard.csv")
    b.add_argument("--grid", default="benchmark",
                   help="the benchmark sweep: benchmark (evaluation), benchmark-tune (tuning), or a sweep YAML")
    b.add_argument("--defense", dest="defenses", action="append", default=[], metavar="SPEC",
                   help="add your own defense beside the built-ins: package.module:Name or path/to/file.py:Name "
                   "(repeatable)")
    _sweep_args(b)
    b.set_defaults(func=run_bench)
    d = sub.add_parser("defaults", help="the frozen defaults record: its digest, and whether the code matches it")
    d.add_argument("--freeze", action="store_true", help="write the code's defaults as the frozen record")
    d.set_defaults(func=run_defaults)


def _sweep_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="sweep folder (runs go to OUT/runs/<name>)")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs at a time, each in its own process; each gets this machine's CPUs / JOBS threads")
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="where runs execute: local worker processes, or one Ray task per run")
    p.add_argument("--address", default=None,
                   help="Ray cluster to join (auto, ray://HOST:10001, HOST:6379); default: start a local Ray")
    p.add_argument("--cpus-per-run", type=float, default=None,
                   help="Ray: CPUs per run, also its threads (default: this machine's CPUs / --jobs, as locally)")
    p.add_argument("--gpus-per-run", type=float, default=0, help="Ray: GPUs per run (0: CPU; 0.5 shares a GPU)")
    p.add_argument("--stall-timeout", type=float, default=STALL_TIMEOUT, metavar="S",
                   help=f"stop a run (recorded failed) whose heartbeat shows no progress for S s ({STALL_TIMEOUT:g}; "
                   "0: never)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="replace the grid's seeds")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of every run, e.g. dataset.root=/data/nih")
    p.add_argument("--only", action="append", default=[], metavar="KEY=VALUE",
                   help="run only the grid's runs with this setting, e.g. dataset.name=dermamnist (repeat: all must "
                   "hold)")
    p.add_argument("--dry-run", action="store_true", help="list the runs and their state, run nothing")


def _run(args: argparse.Namespace, sweep: str, defenses: list | None = None) -> list[dict]:
    from medbackdoor.study.executors import create_executor
    from medbackdoor.study.sweep import load_sweep, run_sweep

    # a bad sweep fails here, before a cluster starts
    spec, _ = load_sweep(sweep, args.seeds, args.overrides, defenses, args.only)
    if spec.get("absent_data"):
        print(f"not on this machine, left out: {', '.join(spec['absent_data'])} (put their files under "
              "dataset.root to include them)")
    if args.dry_run:
        executor = None
    else:
        executor = create_executor(args.executor, args.jobs, args.address, args.cpus_per_run, args.gpus_per_run,
                                   args.stall_timeout)
    try:
        results = run_sweep(sweep, args.out, args.jobs, args.dry_run, args.seeds, overrides=args.overrides,
                            executor=executor, defenses=defenses, only=args.only)
    finally:
        if executor is not None:
            executor.close()
    if args.dry_run:
        for r in results:
            print(f"{r['name']:<32} {r['state']}")
        print(f"{len(results)} runs")
    return results


def _split(results: list[dict]) -> tuple[list[dict], list[dict]]:
    """(runs, steps): a sweep's statuses for its runs and for what it did after them (``RUN:DEFENSE``,
    ``RUN:control``)."""
    return [r for r in results if ":" not in r["name"]], [r for r in results if ":" in r["name"]]


def _traceback_path(r: dict, folders: dict[str, str]) -> Path:
    """Where the traceback of a failed run, or of a failed step ``RUN:STEP`` (``folders``: run name → folder), is."""
    from medbackdoor.rundir import RunDir

    if ":" not in r["name"]:
        return RunDir(r["folder"]).manifest_path
    run, _, step = r["name"].partition(":")
    return RunDir(folders[run]).step_failure_path(step)


def report_failures(out: Path, results: list[dict]) -> int:
    """Print each failed run (or defense, or control scoring) and where its traceback is; the exit code: 1 if
    anything failed, else 0."""
    runs, steps = _split(results)
    folders = {r["name"]: r["folder"] for r in runs}
    code = 0
    for what, group in (("runs", runs), ("defense and control steps", steps)):
        failed = [r for r in group if r.get("status") == "failed"]
        if not failed:
            continue
        code = 1
        print(f"{len(failed)} of {len(group)} {what} failed:", file=sys.stderr)
        for r in failed:
            print(f"  {r['name']}: {r.get('error')} (traceback in {_traceback_path(r, folders)})", file=sys.stderr)
    return code


def run_sweep_cmd(args: argparse.Namespace) -> int:
    results = _run(args, args.sweep)
    return 0 if args.dry_run else report_failures(args.out, results)


def run_report(args: argparse.Namespace) -> int:
    from medbackdoor.report.build import build_report
    from medbackdoor.study.sweep import sweep_cuts

    if not args.dir.is_dir():
        raise UserError(f"{args.dir} does not exist")
    if args.page is not None and not args.page.is_file():
        raise UserError(f"{args.page} does not exist")
    path = build_report(args.dir, sweep_cuts(args.dir))
    print(f"report: {path}")
    if args.page is not None:
        from medbackdoor.report.scorecard import write_page

        write_page(args.page, (path.parent / "scorecard.md").read_text())
        print(f"scorecard written into {args.page}")
    return 0


def run_reproduce(args: argparse.Namespace) -> int:
    from medbackdoor.report.build import build_report
    from medbackdoor.study.figure1 import explain_figure_runs
    from medbackdoor.study.sweep import sweep_cuts

    results = _run(args, args.protocol)
    if args.dry_run:
        return 0
    explain_figure_runs(results)
    path = build_report(args.out, sweep_cuts(args.out))
    runs, steps = _split(results)
    done = sum(r.get("status") != "failed" for r in runs)
    extra = f", {sum(r.get('status') != 'failed' for r in steps)} of {len(steps)} defense and control steps" \
        if steps else ""
    print(f"{done} of {len(runs)} runs complete{extra}; report: {path}")
    return report_failures(args.out, results)


def run_bench(args: argparse.Namespace) -> int:
    """The benchmark sweep (with the user's defenses added), then the report with its scorecard."""
    from medbackdoor.report.build import build_report
    from medbackdoor.study.sweep import sweep_cuts

    results = _run(args, args.grid, [{"method": spec} for spec in args.defenses])
    if args.dry_run:
        return 0
    path = build_report(args.out, sweep_cuts(args.out))
    print(f"report: {path}; scorecard: {path.parent / 'scorecard.md'}")
    return report_failures(args.out, results)


def run_defaults(args: argparse.Namespace) -> int:
    """Print the frozen record's digest and every default the code changed since; exit 1 when any."""
    from medbackdoor.defaults import FROZEN, current_defaults, differences, freeze, frozen_defaults

    if args.freeze:
        print(f"froze {FROZEN}: digest {freeze()}")
        return 0
    from medbackdoor.defaults import defaults_digest

    diff = differences(frozen_defaults(), current_defaults())
    print(f"frozen defaults {FROZEN}: digest {defaults_digest()}")
    for line in diff:
        print(f"  changed in the code: {line}")
    if diff:
        print(f"{len(diff)} default(s) differ from the frozen record: an evaluation now would not run under it "
              "(freeze again, and log a new evaluation in docs/results/ledger.md)")
    return 1 if diff else 0
