"""``medbackdoor defend RUN_DIR --method NAME``: one defense on a finished run, scored against the truth."""

from __future__ import annotations

import argparse
from pathlib import Path

from medbackdoor.defenses.summary import DefenseSummary
from medbackdoor.rundir import RunDir


def add_parser(sub) -> None:
    from medbackdoor.defenses import DEFENSES

    p = sub.add_parser("defend", help="run a backdoor defense on a run and score it (writes RUN/defenses/NAME/)")
    p.add_argument("run", type=Path, help="a run folder written by medbackdoor run")
    p.add_argument("--method", required=True,
                   help=f"one of: {', '.join(DEFENSES.names())}; or your own: package.module:ClassName or "
                   "path/to/file.py:ClassName")
    p.add_argument("--epoch", type=int, default=None, help="checkpoint to defend (default: the last)")
    p.add_argument("--holdout", type=int, default=None,
                   help="clean holdout images the defender has: the first N of the validation split (default 1000)")
    p.add_argument("--set", dest="options", action="append", default=[], metavar="KEY=VALUE",
                   help="a defense option, e.g. rule=faithful (repeatable)")
    p.add_argument("--retrain", action="store_true",
                   help="data defenses: drop the flagged samples and retrain with the run's config into "
                        "RUN/defenses/NAME/retrain")
    p.add_argument("--name", default=None,
                   help="output folder under RUN/defenses/ (default: the method, or a plugin's class name)")
    p.add_argument("--defender-seed", type=int, default=0,
                   help="root of the defender's seeds: the order it sees the training set in, its own draws")
    p.add_argument("--clean-model", type=Path, default=None, metavar="CONTROL",
                   help="input defenses and repairs: run on this clean control's model (its weights, training set "
                   "and holdout) with RUN's test inputs, into RUN/defenses/NAME/clean-model/: the detector's response "
                   "to the trigger where no backdoor is, or the clean control repaired and scored on RUN's trigger")
    p.add_argument("--force", action="store_true", help="recompute even if the same request is done")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: the run's train.device)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from medbackdoor.defenses.runner import DefenseFailed, defend, parse_options, retrain
    from medbackdoor.run import Run

    options = parse_options(args.options)  # a bad --set is one line before the run folder is read
    run = Run(args.run)
    if args.clean_model is not None and args.retrain:
        from medbackdoor.errors import UserError

        raise UserError("--clean-model runs input defenses and repairs; --retrain needs a data defense")
    try:
        summary = defend(run, args.method, args.epoch, args.holdout, options, args.force,
                         args.device, require_data=args.retrain, name=args.name, defender_seed=args.defender_seed,
                         clean_model=None if args.clean_model is None else Run(args.clean_model))
    except DefenseFailed as exc:  # the defense's own error, with its traceback from the defense process
        print(f"{exc.trace.rstrip()}\nmedbackdoor: defense {args.method} failed: {exc}", file=sys.stderr)
        return 1
    print(describe(summary))
    if args.retrain:
        result = retrain(run, summary.name, summary)
        print(f"retrained without {result['dropped']} flagged samples: {result['run']}")
        print(f"  {before_after(summary.metric_columns, result['before'], result['after'])}")
    return 0


def before_after(columns: dict[str, str], before: dict, after: dict) -> str:
    """``ASR(p=0.6) 1.000 -> 0.020 | ... | AUROC-NN 0.80 -> 0.79``: the run's ASR and AUROC columns (``columns``:
    name → label, as the summary records them), before and after."""
    shown = [n for n in columns if n.startswith("asr_")] + ["auroc_nn"]
    return " | ".join(f"{columns[n]} {before[n]:.3f} -> {after[n]:.3f}" for n in shown if n in before and n in after)


def describe(s: DefenseSummary) -> str:
    head = f"{s.method} ({s.kind}), epoch {s.epoch}, holdout {s.holdout}, {s.seconds:.1f}s"
    if s.detection is not None:
        d = s.detection
        line = (f"detection AUROC {d['auroc']:.3f} | TPR@1%FPR {d['tpr_at_1pct_fpr']:.3f} "
                f"TPR@5%FPR {d['tpr_at_5pct_fpr']:.3f}")
        if "precision" in d:
            line += f" | flagged {d['flagged']}: precision {d['precision']:.3f} recall {d['recall']:.3f}"
            if "false_positive_rate" in d:
                line += f", realised FPR {d['false_positive_rate']:.3f}"
        return f"{head}\n{line}\nwrote {RunDir(s.run).defense_dir(s.name)}"
    if s.backdoored_verdict is not None:
        return (f"{head}\nverdict: {'backdoored' if s.backdoored_verdict else 'clean'}; flagged "
                f"{s.flagged_labels or 'none'}; true target {s.target} ranked {s.target_rank}")
    return f"{head}\n{before_after(s.metric_columns, s.before, s.after)}"
