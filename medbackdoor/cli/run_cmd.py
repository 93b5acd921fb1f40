"""``medbackdoor run``: one training run into a folder."""

from __future__ import annotations

import argparse

from medbackdoor.config import load_config


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="YAML run config (defaults run without one)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. trigger.size=4 (repeatable)")


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="train and evaluate one backdoor run")
    add_config_args(p)
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--resume", action="store_true", help="continue an unfinished run from its last epoch")
    p.add_argument("--force", action="store_true", help="start over in a folder that holds a run")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medbackdoor.train import run as train_run

    config = load_config(args.config, args.overrides)
    manifest = train_run(config, args.out, resume=args.resume, force=args.force, progress=not args.quiet)
    print(f"run complete: {args.out} ({manifest['epochs_done']} epochs)")
    return 0
