"""The package's structure: no import cycles between its modules, lazy (function-level) imports included."""

import ast
from pathlib import Path

import medbackdoor

ROOT = Path(medbackdoor.__file__).resolve().parent


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name → file, for every module of the package (packages by their ``__init__``)."""
    out = {}
    for path in root.rglob("*.py"):
        parts = ("medbackdoor", *path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imported(module: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``module`` imports anywhere in its file (top level or inside a function).

    ``from a.b import c`` counts as importing ``a.b.c`` when that is a module, else ``a.b``. A module's own
    ancestor packages are left out (importing ``a.b.c`` runs ``a/b/__init__`` first, which is not a cycle).
    """
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            names += [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
    out = set()
    for name in names:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name and name != module and not module.startswith(f"{name}."):
            out.add(name)
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while not part or part[-1] != v:
                part.append(stack.pop())
                on.discard(part[-1])
            if len(part) > 1:
                found.append(sorted(part))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_lazy_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_import_graph_reads_function_level_and_relative_imports(tmp_path):
    pkg = tmp_path / "medbackdoor"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from medbackdoor.sub.one import f\n")
    (pkg / "sub" / "one.py").write_text("def f():\n    from ..two import g\n    return g\n")
    (pkg / "two.py").write_text("def g():\n    from medbackdoor.sub import one\n")
    files = module_files(pkg)
    known = set(files)
    graph = {m: imported(m, p, known) for m, p in files.items()}
    assert graph["medbackdoor.sub.one"] == {"medbackdoor.two"}
    assert graph["medbackdoor.two"] == {"medbackdoor.sub.one"}
    assert cycles(graph) == [["medbackdoor.sub.one", "medbackdoor.two"]]


def test_no_import_cycles_in_the_package():
    files = module_files()
    known = set(files)
    graph = {m: imported(m, p, known) for m, p in files.items()}
    assert cycles(graph) == []


def test_one_option_check_for_datasets_and_triggers():
    """Datasets and triggers check their options through the one registry check: an unknown option or a value of
    the wrong type is one line naming it; what the framework supplies (root, seed, ...) is never listed."""
    import pytest

    from medbackdoor.config import load_config
    from medbackdoor.errors import UserError
    from medbackdoor.experiment import build_dataset, build_trigger
    from medbackdoor.labels import LABELS

    with pytest.raises(UserError, match=r"dataset synthetic has no option 'colour'; its options: (?!.*\bseed\b)"):
        build_dataset(load_config(overrides=["dataset.options.colour=gray"]))
    with pytest.raises(UserError, match="dataset synthetic option n_images must be a number"):
        build_dataset(load_config(overrides=["dataset.options.n_images=true"]))
    with pytest.raises(UserError, match="trigger patch option pattern must be of type str"):
        build_trigger(load_config(overrides=["trigger.kind=patch", "trigger.options.pattern=3"]), LABELS)
    trigger, _ = build_trigger(load_config(overrides=["trigger.kind=patch", "trigger.size=4",
                                                      "trigger.options.size=5"]), LABELS)
    assert trigger.size == 5  # an explicit trigger option wins over the shared trigger.size
