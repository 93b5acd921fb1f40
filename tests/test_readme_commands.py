"""Every ``medbackdoor ...`` command in the README parses, and every config key it names exists (no training)."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from medbackdoor.cli._common import alias_overrides
from medbackdoor.cli.main import build_parser
from medbackdoor.config import load_config

README = Path(__file__).resolve().parents[1] / "README.md"
SHELL_FENCES = ("", "bash", "sh", "shell", "console")


def shell_blocks(text: str) -> list[list[str]]:
    """The lines of each fenced code block whose info string is empty or a shell (```bash, ```sh, ...)."""
    blocks, lines, keep = [], None, False
    for line in text.splitlines():
        fence = line.strip()
        if lines is None:
            if fence.startswith("```"):
                lines, keep = [], fence[3:].strip().lower() in SHELL_FENCES
        elif fence == "```":
            if keep:
                blocks.append(lines)
            lines = None
        else:
            lines.append(line)
    return blocks


def strip_comment(line: str) -> str:
    """A shell line without its trailing ``# comment`` (a ``#`` that starts a word, as in bash)."""
    return re.split(r"(?:^|\s)#", line, maxsplit=1)[0].rstrip()


def commands(text: str) -> list[str]:
    """The ``medbackdoor ...`` command lines of the shell code blocks, comments stripped, continuations joined."""
    found = []
    for block in shell_blocks(text):
        pending = ""
        for raw in block:
            line = strip_comment(raw).strip()
            if line.endswith("\\"):
                pending += line[:-1].rstrip() + " "
                continue
            line, pending = pending + line, ""
            if line.startswith("medbackdoor "):
                found.append(line)
    return found


def check_command(line: str) -> argparse.Namespace:
    """Parse ``line`` with the real CLI parser, then load its config keys (with their shorthands) if it has any.

    Raises:
        AssertionError: argparse refused the line.
        UserError: an unknown config key or a value of the wrong type.
    """
    try:
        args = build_parser().parse_args(shlex.split(line)[1:])
    except SystemExit as exc:
        raise AssertionError(f"README command does not parse: {line}") from exc
    config, overrides = getattr(args, "config", None), alias_overrides(args) + getattr(args, "overrides", [])
    if config is not None or overrides:
        load_config(config, overrides)
    return args


README_COMMANDS = commands(README.read_text())


def test_readme_has_commands():
    assert len(README_COMMANDS) >= 10, README_COMMANDS


def inline_flags_exist(span: str) -> bool:
    """Whether the sub-command of an inline ``medbackdoor ...`` span exists and has every ``--flag`` it names.

    Inline spans may leave out required arguments (``medbackdoor data cache ...``), so they are not parsed whole.
    """
    parser, tokens = build_parser(), shlex.split(span)[1:]
    while tokens:
        sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        if sub is None or tokens[0] not in sub.choices:
            break
        parser, tokens = sub.choices[tokens[0]], tokens[1:]
    if any(isinstance(a, argparse._SubParsersAction) for a in parser._actions):
        return False  # stopped before naming a (sub-)command
    return all(t.split("=")[0] in parser._option_string_actions for t in tokens if t.startswith("--"))


@pytest.mark.parametrize("line", README_COMMANDS)
def test_readme_command_parses(line):
    check_command(line)


def test_readme_inline_commands_name_real_flags():
    spans = [s for s in re.findall(r"`([^`\n]+)`", README.read_text()) if s.startswith("medbackdoor ")]
    assert len(spans) >= 10
    assert [s for s in spans if not inline_flags_exist(s)] == []
    assert not inline_flags_exist("medbackdoor metrics PRED.npz --stric")
    assert not inline_flags_exist("medbackdoor data")


def test_readme_set_spans_name_real_keys():
    """Inline code such as `--set trigger.mode=append` (the paper-code table) names config keys that exist."""
    spans = [s for s in re.findall(r"`([^`\n]+)`", README.read_text()) if "--set " in s]
    assert spans
    for span in spans:
        load_config(None, [v.strip("'\"") for v in re.findall(r"--set\s+(\S+)", span)])


def test_extraction_handles_comments_continuations_and_fences():
    text = "\n".join([
        "```bash", "medbackdoor run --config quick \\", "    --out runs/x   # a comment", "make test", "```",
        "```python", "medbackdoor = 1", "```",
        "```", "  medbackdoor summary a#b runs/y", "```",
        "medbackdoor outside a block",
    ])
    assert commands(text) == ["medbackdoor run --config quick --out runs/x", "medbackdoor summary a#b runs/y"]


@pytest.mark.parametrize("line", [
    "medbackdoor run --mode append --out runs/x",
    "medbackdoor run --config quick --set trigger.mode=append --crop 0.6 --out runs/x",
    "medbackdoor nonsense",
])
def test_bad_commands_are_caught(line):
    with pytest.raises(AssertionError):
        check_command(line)


@pytest.mark.parametrize("line", [
    "medbackdoor run --set trigger.moda=append --out runs/x",
    "medbackdoor run --set eval.strict=maybe --out runs/x",
    "medbackdoor data cache --set preprocess.resize_mode=nearest",
    "medbackdoor sweep quick --set train.sed=1 --out runs/x",
])
def test_bad_config_keys_are_caught(line):
    from medbackdoor.errors import UserError

    with pytest.raises(UserError):
        check_command(line)
