"""Entry point: builds the sub-command parsers and turns :class:`UserError` into one line and exit code 2."""

from __future__ import annotations

import argparse
import sys

from medbackdoor import __version__
from medbackdoor.cli import data_cmd, defend_cmd, explain_cmd, metrics_cmd, poison_cmd, run_cmd, study_cmd, summary_cmd
from medbackdoor.errors import UserError

COMMANDS = (data_cmd, metrics_cmd, poison_cmd, run_cmd, summary_cmd, study_cmd, explain_cmd, defend_cmd)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other bad input
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="medbackdoor", description="Backdoor attacks on medical-imaging classifiers.")
    parser.add_argument("--version", action="version", version=f"medbackdoor {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for module in COMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 2 bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"medbackdoor: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into a reader that stopped (`| head`): not an error of ours
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("medbackdoor: interrupted", file=sys.stderr)
        return 130
