"""``medbackdoor run``: one training run into a folder."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from medbackdoor.config import load_config
from medbackdoor.errors import UserError


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
    p.add_argument("--nproc", type=int, default=None, metavar="N",
                   help="data-parallel on N processes (one per GPU; gloo on CPU): launches torchrun --standalone "
                        "--nproc_per_node N -m medbackdoor run ... with the other arguments")
    p.set_defaults(func=run)


def torchrun_command(args: argparse.Namespace) -> list[str]:
    """The ``torchrun`` command line ``run --nproc N`` stands for (the same arguments, minus ``--nproc``)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
           "-m", "medbackdoor", "run", "--out", str(args.out)]
    if args.config:
        cmd += ["--config", args.config]
    for item in args.overrides:
        cmd += ["--set", item]
    cmd += [flag for flag, on in (("--resume", args.resume), ("--force", args.force), ("--quiet", args.quiet)) if on]
    return cmd


def run(args: argparse.Namespace) -> int:
    from medbackdoor.train import run as train_run

    config = load_config(args.config, args.overrides)  # a bad config fails here, before any process starts
    if args.nproc is not None:
        if args.nproc < 1:
            raise UserError(f"--nproc must be at least 1, got {args.nproc}")
        if os.environ.get("WORLD_SIZE"):
            raise UserError("--nproc inside torchrun: drop --nproc (torchrun already started the processes)")
        if config.train.batch_size % args.nproc:
            raise UserError(f"train.batch_size {config.train.batch_size} must be a multiple of --nproc {args.nproc}")
        return subprocess.call(torchrun_command(args))
    manifest = train_run(config, args.out, resume=args.resume, force=args.force, progress=not args.quiet)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for the run
        print(f"run complete: {args.out} ({manifest.epochs_done} epochs)")
    return 0
