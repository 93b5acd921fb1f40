"""Every ``medbackdoor ...`` command a reader copies (README and every guide and results page of the documentation
site) parses with the real parser, names config keys and defense options that exist, and the tutorial runs.

The fast tier runs the tutorial's blocks marked ``<!-- tutorial: run -->``; the slow tier also runs those marked
``<!-- tutorial: run slow -->``. The extraction lives in ``tools/doc_commands.py``, which also runs the whole
tutorial.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import shlex
import sys
from pathlib import Path

import pytest

from medbackdoor.cli._common import alias_overrides
from medbackdoor.cli.main import build_parser
from medbackdoor.config import load_config
from medbackdoor.data import DATASETS
from medbackdoor.defenses import DEFENSES
from medbackdoor.defenses.runner import create_defense, parse_options
from medbackdoor.errors import UserError
from medbackdoor.experiment import build_trigger

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TUTORIAL = ROOT / "docs" / "tutorial.md"
# every page a user reads: the README and the site's pages but the generated API and configuration references
PAGES = [README] + sorted(p for p in (ROOT / "docs").rglob("*.md")
                          if "api" not in p.relative_to(ROOT / "docs").parts and p.name != "configuration.md")


def load_doc_commands():
    spec = importlib.util.spec_from_file_location("doc_commands", ROOT / "tools" / "doc_commands.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


dc = load_doc_commands()


def check_command(line: str) -> argparse.Namespace:
    """Parse ``line`` with the real CLI parser, then load its config keys (with their shorthands) if it has any,
    or build its defense from its options.

    Raises:
        AssertionError: argparse refused the line.
        UserError: an unknown config key or defense option, or a value of the wrong type.
    """
    try:
        args = build_parser().parse_args(shlex.split(line)[1:])
    except SystemExit as exc:
        raise AssertionError(f"documented command does not parse: {line}") from exc
    if getattr(args, "method", None) is not None and hasattr(args, "options"):  # defend: --set is a defense option
        create_defense(args.method, parse_options(args.options))
        return args
    config, overrides = getattr(args, "config", None), alias_overrides(args) + getattr(args, "overrides", [])
    if config is not None or overrides:
        check_components(load_config(config, overrides))
    return args


def check_components(config) -> None:
    """What building the run would check before reading any data: the dataset's options and the trigger."""
    DATASETS.check_options(config.dataset.name, dict(config.dataset.options), f"dataset {config.dataset.name}",
                           given={"root", "limit", "val_fraction", "seed", "split"})
    names = DATASETS.get(config.dataset.name).label_names
    if names:  # a user's own folder or table declares its classes only once read
        build_trigger(config, names)


PAGE_COMMANDS = {page.relative_to(ROOT).as_posix(): dc.commands(page.read_text()) for page in PAGES}
ALL_COMMANDS = [(page, line) for page, lines in PAGE_COMMANDS.items() for line in lines]


def test_pages_have_commands():
    assert len(PAGE_COMMANDS["README.md"]) >= 6, PAGE_COMMANDS["README.md"]
    assert len(PAGE_COMMANDS["docs/tutorial.md"]) >= 10, PAGE_COMMANDS["docs/tutorial.md"]
    assert len(ALL_COMMANDS) >= 60, len(ALL_COMMANDS)
    for guide in ("data", "runs", "attacks", "studies", "defenses", "scaling", "paper", "explainability"):
        assert PAGE_COMMANDS[f"docs/{guide}.md"], f"docs/{guide}.md shows no command"


def write_page_files(page: str, folder: Path) -> None:
    """The files a page has its reader write (its ``title="PATH"`` blocks), written under ``folder``."""
    for block in dc.blocks((ROOT / page).read_text()):
        if block.title:
            (folder / block.title).parent.mkdir(parents=True, exist_ok=True)
            (folder / block.title).write_text("\n".join(block.lines) + "\n")


@pytest.mark.parametrize(("page", "line"), ALL_COMMANDS)
def test_documented_command_parses(page, line, tmp_path, monkeypatch):
    write_page_files(page, tmp_path)  # a plugin the page writes is there, as for its reader
    monkeypatch.chdir(tmp_path)
    check_command(line)


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


def takes_options(method: str, values: list[str]) -> bool:
    try:
        create_defense(method, parse_options(values))
    except UserError:
        return False
    return True


INLINE = [(p.relative_to(ROOT).as_posix(), s) for p in PAGES for s in dc.inline_spans(p.read_text())]


def test_inline_commands_name_real_flags():
    spans = [(page, s) for page, s in INLINE if s.startswith("medbackdoor ")]
    assert len(spans) >= 20
    assert [(page, s) for page, s in spans if not inline_flags_exist(s)] == []
    assert not inline_flags_exist("medbackdoor metrics PRED.npz --stric")
    assert not inline_flags_exist("medbackdoor data")


def test_inline_set_spans_name_real_keys():
    """Inline code such as `--set trigger.mode=append` (the paper-code table) names config keys that exist;
    in a `medbackdoor defend` span it names options of that defense."""
    spans = [(page, s) for page, s in INLINE if "--set " in s]
    assert len(spans) >= 10
    for page, span in spans:
        values = [v.strip("'\"") for v in re.findall(r"--set\s+(\S+)", span)]
        method = re.search(r"--method\s+(\S+)", span)
        if any(v.lower() == "key=value" for v in values):  # the syntax, not a key
            continue
        try:
            if span.startswith("medbackdoor defend"):
                if method is None or method.group(1).isupper():  # a placeholder: --method NAME
                    continue
                create_defense(method.group(1), parse_options(values))
            else:
                try:
                    load_config(None, values)
                except UserError:  # a defense option quoted alone (`--set max_scale=5`): some defense takes it
                    if not any(takes_options(name, values) for name in DEFENSES.names()):
                        raise
        except UserError as exc:
            raise AssertionError(f"{page}: `{span}`: {exc}") from exc


def test_readme_is_short_and_links_every_guide():
    text = README.read_text()
    assert len(text.encode()) <= 8 * 1024, len(text.encode())
    assert text.lstrip().startswith("# medbackdoor")
    first_block = dc.blocks(text)[0]
    assert dc.block_commands(first_block.lines) == ["make demo", "make test"]
    guides = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md")
                    if p.name not in ("index.md",))
    linked = set(re.findall(r"\]\((docs/[^)#]+)", text))
    assert [g for g in guides if g not in linked] == []
    assert {"docs/results/attacks.md", "docs/results/defenses.md", "docs/results/architectures.md"} <= linked
    for target in re.findall(r"\]\(([^)]+)\)", text):
        if "://" in target:
            continue
        path, _, anchor = target.partition("#")
        assert (ROOT / path).is_file(), f"README links to a missing file: {target}"
        if anchor:  # MkDocs' and GitHub's heading ids agree for these headings
            headings = re.findall(r"^#+ (.+)$", (ROOT / path).read_text(), flags=re.M)
            slugs = {re.sub(r"[^a-z0-9 _-]", "", h.lower()).strip().replace(" ", "-") for h in headings}
            assert anchor in slugs, f"README links to a missing heading: {target}"


WRITE_YOUR_OWN = ROOT / "docs" / "write-your-own.md"


def test_write_your_own_shows_short_complete_components():
    files = {b.title: b.lines for b in dc.blocks(WRITE_YOUR_OWN.read_text()) if b.title}
    assert set(files) == {"own/my_distance.py", "own/my_blur.py", "own/my_trigger.py", "own/sweep.yaml"}
    for name in ("own/my_distance.py", "own/my_blur.py", "own/my_trigger.py"):
        assert 20 <= len(files[name]) <= 40, (name, len(files[name]))


@pytest.mark.slow
def test_write_your_own_runs(tmp_path, monkeypatch):
    """The page's components, its run with the trigger and its two defenses, exactly as the page writes them."""
    import json

    monkeypatch.setenv("MEDBACKDOOR_CACHE", str(tmp_path / "cache"))
    work = tmp_path / "work"
    assert len(dc.run_tutorial(WRITE_YOUR_OWN, work, ("run",), log=lambda *_: None)) == 1
    manifest = json.loads((work / "own" / "cross" / "manifest.json").read_text())
    assert manifest["plugins"]["trigger"]["file"] == str(work / "own" / "my_trigger.py")
    for name in ("HoldoutDistance", "BlurShift"):
        summary = json.loads((work / "own" / "cross" / "defenses" / name / "summary.json").read_text())
        assert 0 <= summary["detection"]["auroc"] <= 1 and summary["origin"]["sha256"]


@pytest.mark.slow
def test_write_your_own_sweep_runs(tmp_path, monkeypatch):
    """The page's sweep: the two plugin defenses beside a built-in one, and the report's defense tables."""
    monkeypatch.setenv("MEDBACKDOOR_CACHE", str(tmp_path / "cache"))
    work = tmp_path / "work"
    dc.run_tutorial(WRITE_YOUR_OWN, work, ("run slow",), log=lambda *_: None)
    defenses = (work / "own" / "sweep" / "report" / "defenses_auroc.csv").read_text()
    assert all(name in defenses for name in ("distance", "blur", "spectre"))


def test_tutorial_has_run_blocks_and_a_sweep_file():
    blocks = dc.blocks(TUTORIAL.read_text())
    assert [b.title for b in blocks if b.title] == ["tutorial/defenses.yaml"]
    assert sum(b.marker == "run" for b in blocks) >= 3
    assert sum(b.marker == "run slow" for b in blocks) >= 2
    assert not any("TUTORIAL_" in line for b in blocks for line in b.lines)
    assert "TUTORIAL_" not in TUTORIAL.read_text(), "a number placeholder was left in the tutorial"


def test_tutorial_short_commands_run(tmp_path, monkeypatch):
    """Steps 1 and 2 and the defense sweep's dry run, exactly as the tutorial writes them."""
    monkeypatch.setenv("MEDBACKDOOR_CACHE", str(tmp_path / "cache"))
    timings = dc.run_tutorial(TUTORIAL, tmp_path / "work", ("run",), log=lambda *_: None)
    assert len(timings) >= 3
    assert (tmp_path / "work" / "tutorial" / "poison" / "triggers.png").is_file()
    assert (tmp_path / "work" / "tutorial" / "defenses.yaml").is_file()


@pytest.mark.slow
def test_tutorial_slow_commands_run(tmp_path, monkeypatch):
    """The first attack on real radiographs and the two defenses on it, exactly as the tutorial writes them."""
    monkeypatch.setenv("MEDBACKDOOR_CACHE", str(tmp_path / "cache"))
    dc.run_tutorial(TUTORIAL, tmp_path / "work", ("run", "run slow"), log=lambda *_: None)
    run = tmp_path / "work" / "tutorial" / "real-3px"
    assert (run / "defenses" / "spectre" / "summary.json").is_file()
    assert (run / "defenses" / "strip" / "summary.json").is_file()


def test_extraction_handles_comments_continuations_fences_and_markers():
    text = "\n".join([
        "<!-- tutorial: run -->",
        "```bash", "medbackdoor run --config quick \\", "    --out runs/x   # a comment", "make test", "```",
        "```python", "medbackdoor = 1", "```",
        "```", "  medbackdoor summary a#b runs/y", "```",
        '```yaml title="t/s.yaml"', "grid: []", "```",
        "medbackdoor outside a block `medbackdoor inline --x`",
    ])
    assert dc.commands(text) == ["medbackdoor run --config quick --out runs/x", "medbackdoor summary a#b runs/y"]
    found = dc.blocks(text)
    assert [b.marker for b in found] == ["run", None, None, None]
    assert [b.title for b in found] == [None, None, None, "t/s.yaml"]
    assert dc.inline_spans(text) == ["medbackdoor inline --x"]


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
    "medbackdoor defend runs/x --method spectral --set rul=faithful",
    "medbackdoor defend runs/x --method nonsense",
    "medbackdoor run --config quick --set dataset.name=chestmnist --set dataset.options.n_images=5 --out runs/x",
    "medbackdoor run --config quick --set trigger.kind=blend --set trigger.options.alfa=0.2 --out runs/x",
])
def test_bad_config_keys_and_options_are_caught(line):
    with pytest.raises(UserError):
        check_command(line)
