"""The documentation site: the configuration reference matches the config dataclasses, and ``mkdocs build --strict``
passes (skipped where MkDocs is not installed)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GENERATOR = ROOT / "tools" / "gen_config_reference.py"
REFERENCE = ROOT / "docs" / "configuration.md"
DOCS_PACKAGES = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")


def load_generator():
    spec = importlib.util.spec_from_file_location("gen_config_reference", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def missing_docs_packages() -> list[str]:
    missing = []
    for name in DOCS_PACKAGES:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:  # the parent package of a dotted name is missing
            found = False
        if not found:
            missing.append(name)
    return missing


def test_configuration_reference_is_current():
    rendered = load_generator().render()
    assert REFERENCE.is_file(), "docs/configuration.md is missing: run python tools/gen_config_reference.py"
    assert REFERENCE.read_text(encoding="utf-8") == rendered, (
        "docs/configuration.md is stale (medbackdoor/config.py changed): run python tools/gen_config_reference.py")


def test_configuration_reference_covers_every_key():
    from medbackdoor.config import RunConfig, flatten

    text = REFERENCE.read_text(encoding="utf-8")
    for key in flatten(RunConfig().to_dict()):
        assert f"| `{key}` |" in text, key


def test_write_is_atomic_and_idempotent(tmp_path):
    gen = load_generator()
    out = tmp_path / "docs" / "configuration.md"
    assert gen.write(out) is True
    assert gen.write(out) is False
    assert out.read_text(encoding="utf-8") == gen.render()
    assert [p.name for p in out.parent.iterdir()] == ["configuration.md"]  # no temporary file left behind


@pytest.mark.skipif(bool(missing_docs_packages()),
                    reason=f"MkDocs is not installed (missing: {', '.join(missing_docs_packages())}); "
                           "pip install mkdocs mkdocs-material 'mkdocstrings[python]'")
def test_mkdocs_build_strict(tmp_path):
    site = tmp_path / "site"
    # never -q: it silences the warnings, and --strict then counts none of them
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    assert (site / "index.html").is_file()
    assert (site / "configuration" / "index.html").is_file()
    assert (site / "api" / "models" / "index.html").is_file()
