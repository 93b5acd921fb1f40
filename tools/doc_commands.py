"""The commands a reader copies from the README and the documentation site, extracted, and the tutorial run.

The test suite (``tests/test_readme_commands.py``) parses every extracted ``medbackdoor ...`` command with the real
parser and loads its config keys; it runs the tutorial's blocks marked ``<!-- tutorial: run -->`` (fast tier) and
``<!-- tutorial: run slow -->`` (slow tier). Run this file to execute the whole tutorial in a folder and time each
block, which is how the numbers quoted on ``docs/tutorial.md`` were measured::

    python tools/doc_commands.py --workdir /tmp/tutorial            # every block, in order
    python tools/doc_commands.py --workdir /tmp/tutorial --only run  # the blocks the fast tests run

Markdown conventions the extraction relies on: shell code is fenced with ``bash``, ``sh``, ``shell``, ``console``
or no info string; a file the reader writes is a fenced block with ``title="PATH"`` (MkDocs Material's syntax),
written to ``PATH`` before any block after it runs.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHELL_FENCES = ("", "bash", "sh", "shell", "console")
MARKER = re.compile(r"<!--\s*tutorial:\s*(run(?:\s+slow)?)\s*-->")
TITLE = re.compile(r'title="([^"]+)"')


@dataclass
class Block:
    """One fenced code block: its info string, its lines, the ``<!-- tutorial: ... -->`` marker just before it
    (``run``, ``run slow`` or None) and its ``title="..."`` file name if it has one."""

    info: str
    lines: list[str]
    marker: str | None = None
    title: str | None = None

    @property
    def shell(self) -> bool:
        return self.info.split()[0].lower() in SHELL_FENCES if self.info.split() else True


def blocks(text: str) -> list[Block]:
    """Every fenced code block of a Markdown text, in order."""
    found, current, marker = [], None, None
    for line in text.splitlines():
        fence = line.strip()
        if current is None:
            if fence.startswith("```"):
                info = fence[3:].strip()
                title = TITLE.search(info)
                current = Block(info, [], marker, title.group(1) if title else None)
                marker = None
            elif fence:
                hit = MARKER.fullmatch(fence)
                marker = hit.group(1).replace("  ", " ") if hit else None
        elif fence == "```":
            found.append(current)
            current = None
        else:
            current.lines.append(line)
    return found


def shell_blocks(text: str) -> list[list[str]]:
    """The lines of each shell code block (```bash, ```sh, an empty info string, ...)."""
    return [b.lines for b in blocks(text) if b.shell]


def strip_comment(line: str) -> str:
    """A shell line without its trailing ``# comment`` (a ``#`` that starts a word, as in bash)."""
    return re.split(r"(?:^|\s)#", line, maxsplit=1)[0].rstrip()


def block_commands(lines: list[str]) -> list[str]:
    """The command lines of one shell block: comments stripped, ``\\`` continuations joined, blanks dropped."""
    found, pending = [], ""
    for raw in lines:
        line = strip_comment(raw).strip()
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        line, pending = pending + line, ""
        if line:
            found.append(line)
    return found


def commands(text: str) -> list[str]:
    """The ``medbackdoor ...`` command lines of a Markdown text's shell blocks."""
    return [c for lines in shell_blocks(text) for c in block_commands(lines) if c.startswith("medbackdoor ")]


def inline_spans(text: str) -> list[str]:
    """The inline code spans (`...`) of a Markdown text outside fenced blocks."""
    outside, fenced = [], False
    for line in text.splitlines():
        if line.strip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            outside.append(line)
    return re.findall(r"`([^`\n]+)`", "\n".join(outside))


def run_tutorial(path: Path, workdir: Path, markers: tuple[str | None, ...], env: dict | None = None,
                 log=print) -> list[tuple[list[str], float]]:
    """Run the shell blocks of ``path`` whose marker is in ``markers`` in ``workdir``, in order, after writing each
    titled file block met so far; ``medbackdoor`` is this Python's module. Returns (commands, seconds) per block.

    Raises:
        subprocess.CalledProcessError: a command failed (its output has been printed).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **(env or {})}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    timings = []
    for block in blocks(path.read_text()):
        if block.title:
            target = workdir / block.title
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("\n".join(block.lines) + "\n")
            continue
        if not block.shell or block.marker not in markers:
            continue
        cmds = [c for c in block_commands(block.lines) if c.startswith("medbackdoor ")]
        if not cmds:
            continue
        start = time.perf_counter()
        for cmd in cmds:
            log(f"$ {cmd}")
            subprocess.run([sys.executable, "-m", "medbackdoor", *shlex.split(cmd)[1:]], cwd=workdir, env=env,
                           check=True)
        timings.append((cmds, time.perf_counter() - start))
        log(f"# {time.perf_counter() - start:.1f} s")
    return timings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, required=True, help="folder the commands run in")
    parser.add_argument("--page", type=Path, default=ROOT / "docs" / "tutorial.md")
    parser.add_argument("--only", choices=["run", "run slow"], nargs="+",
                        help="run only blocks with these markers (default: every shell block)")
    args = parser.parse_args(argv)
    if not args.page.is_file():
        print(f"doc_commands: no such page: {args.page}", file=sys.stderr)
        return 2
    markers = tuple(args.only) if args.only else (None, "run", "run slow")
    try:
        timings = run_tutorial(args.page, args.workdir, markers)
    except subprocess.CalledProcessError as exc:
        command = shlex.join(["medbackdoor", *exc.cmd[3:]])
        print(f"doc_commands: a command failed with exit code {exc.returncode}: {command}", file=sys.stderr)
        return 1
    for cmds, seconds in timings:
        print(f"{seconds:8.1f} s  {' && '.join(cmds)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
