"""Shared fixtures: tiny NIH-layout folders generated on the fly, and the real sample data when present."""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import sys
import threading
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medbackdoor.labels import LABELS

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
PLUGIN_KINDS = ("defense", "trigger", "dataset", "model")


def pytest_addoption(parser):
    parser.addoption("--plugin", action="append", default=[], metavar="KIND=SPEC",
                     help="also run the registry conformance tests on your own component: KIND is defense, trigger, "
                          "dataset or model, SPEC a plugin (package.module:Name or path/to/file.py:Name) or an "
                          "installed entry point's name (repeatable)")


def pytest_configure(config):
    config.addinivalue_line("markers", "registry(kind, arg): parametrize ``arg`` over the registered components of "
                                       "``kind`` and the --plugin ones")


def plugins(config, kind: str) -> list[str]:
    """The ``--plugin KIND=SPEC`` specs of ``kind``."""
    out = []
    for given in config.getoption("plugin"):
        what, sep, spec = given.partition("=")
        if not sep or what not in PLUGIN_KINDS or not spec:
            raise pytest.UsageError(f"--plugin {given!r}: expected KIND=SPEC with KIND one of {PLUGIN_KINDS}")
        if what == kind:
            out.append(spec)
    return out


def pytest_generate_tests(metafunc):
    """Tests marked ``registry(kind, arg)`` run once per built-in component of ``kind`` and per ``--plugin``."""
    marker = metafunc.definition.get_closest_marker("registry")
    if marker is None:
        return
    kind, arg = marker.args[:2]
    extra = list(marker.kwargs.get("extra", []))
    metafunc.parametrize(arg, [*registered(kind), *extra, *plugins(metafunc.config, kind)])


def registered(kind: str) -> list[str]:
    """The names registered for ``kind`` (built-in and installed entry points)."""
    if kind == "defense":
        from medbackdoor.defenses import DEFENSES as registry
    elif kind == "trigger":
        from medbackdoor.triggers import TRIGGERS as registry
    elif kind == "dataset":
        from medbackdoor.data import DATASETS as registry
    else:
        from medbackdoor.models import MODELS as registry
    return registry.names()


def make_nih(root: Path, n_patients: int = 12, per_patient: int = 3, size: int = 48, missing: int = 0,
             sex_column: str = "Patient Gender", csv_name: str = "Data_Entry_2017_v2020.csv", seed: int = 0,
             flat: bool = False) -> dict:
    """Write a miniature NIH ChestX-ray14 release: CSV, official split lists, PNGs in two archives.

    The last ``missing`` listed images are not written (a partial download). Some images are RGB, RGBA or 16-bit.
    """
    rng = np.random.default_rng(seed)
    rows, names = [], []
    for p in range(1, n_patients + 1):
        for k in range(per_patient):
            name = f"{p:08d}_{k:03d}.png"
            findings = [LABELS[i] for i in np.flatnonzero(rng.random(len(LABELS)) < 0.15)]
            rows.append((name, "|".join(findings) or "No Finding", k, p, 40 + p, "MF"[p % 2], "PA"))
            names.append(name)
    header = f"Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,{sex_column},View Position\n"
    (root / csv_name).write_text(header + "".join(",".join(map(str, r)) + "\n" for r in rows))
    test_patients = set(range(1, n_patients + 1, 4))
    test = [n for n in names if int(n[:8]) in test_patients]
    (root / "test_list.txt").write_text("\n".join(test) + "\n")
    (root / "train_val_list.txt").write_text("\n".join(n for n in names if n not in test) + "\n")
    written = names[: len(names) - missing]
    for i, name in enumerate(written):
        folder = root / "images" if flat else root / f"images_{1 + i % 2:03d}" / "images"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, size=(size, size), dtype=np.uint8)
        if i % 5 == 1:
            img = Image.fromarray(np.stack([pixels] * 3, -1), "RGB")
        elif i % 5 == 2:
            img = Image.fromarray(np.dstack([pixels] * 3 + [np.full_like(pixels, 255)]), "RGBA")
        elif i % 5 == 3:
            img = Image.fromarray(pixels.astype(np.uint16) * 257)
        else:
            img = Image.fromarray(pixels, "L")
        img.save(folder / name)
    return {"names": names, "written": written, "test": test, "rows": rows}


@pytest.fixture
def nih_root(tmp_path: Path) -> Path:
    root = tmp_path / "nih"
    root.mkdir()
    make_nih(root, missing=4)
    return root


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """A factory of tiny synthetic run configs (120 images at 32 px, 1 epoch), extra overrides appended; the image
    cache goes under the test's tmp_path."""
    from medbackdoor.config import load_config

    monkeypatch.setenv("MEDBACKDOOR_CACHE", str(tmp_path / "cache"))
    base = ["dataset.options.n_images=120", "dataset.options.source_size=32", "image_size=32", "train.epochs=1",
            "train.batch_size=16", "eval.epsilons=[0.5]"]
    return lambda *extra: load_config(overrides=[*base, *extra])


@contextlib.contextmanager
def image_cache_at(folder: Path):
    """``MEDBACKDOOR_CACHE`` set to ``folder`` for a module-scoped fixture (``monkeypatch`` is per test), then
    restored."""
    old = os.environ.get("MEDBACKDOOR_CACHE")
    os.environ["MEDBACKDOOR_CACHE"] = str(folder)
    try:
        yield folder
    finally:
        if old is None:
            os.environ.pop("MEDBACKDOOR_CACHE", None)
        else:
            os.environ["MEDBACKDOOR_CACHE"] = old


def module_run(tmp_path_factory, name: str, overrides: list[str]):
    """For a module-scoped fixture: a run of ``overrides`` trained once into ``FOLDER/run``, its image cache in
    ``FOLDER/cache`` (``MEDBACKDOOR_CACHE`` set there while the module's tests use it). Yields the run folder."""
    from medbackdoor.config import load_config
    from medbackdoor.train import run

    folder = tmp_path_factory.mktemp(name)
    with image_cache_at(folder / "cache"):
        run(load_config(overrides=overrides), folder / "run", progress=False)
        yield folder / "run"


@pytest.fixture
def one_thread():
    """Tiny tensors: torch threads only fight over the shared CPU cores (use with ``pytest.mark.usefixtures``)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def shared_data() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED


def nih_layout_from_sample(shared: Path, root: Path):
    """The 16 real 1024² originals of ``nih-real-sample`` laid out as the NIH release (one of them is RGBA)."""
    import csv

    from medbackdoor.data import NIHChestXray14

    src = shared / "nih-real-sample"
    (root / "images_001").mkdir(parents=True)
    (root / "images_001" / "images").symlink_to(src / "source_1024")
    names = sorted(p.name for p in (src / "source_1024").glob("*.png"))
    with open(src / "labels.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["Image Index"] in names]
    with open(root / "Data_Entry_2017_v2020.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (root / "test_list.txt").write_text("\n".join(names[:3]) + "\n")
    (root / "train_val_list.txt").write_text("\n".join(names[3:]) + "\n")
    return NIHChestXray14(root, val_fraction=0.2)


# --- MedMNIST files (tests/test_chestmnist.py, tests/test_medmnist2d.py) -----------------------------------------

@pytest.fixture
def medmnist_isolated(tmp_path, monkeypatch):
    """No test touches the real home or cache, and none sees a real medmnist unless it asks for it."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MEDBACKDOOR_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def no_medmnist(monkeypatch):
    monkeypatch.setitem(sys.modules, "medmnist", None)
    monkeypatch.setitem(sys.modules, "medmnist.info", None)


def install_medmnist(monkeypatch, info: dict) -> None:
    """Install a stand-in ``medmnist`` package whose ``INFO`` is ``info`` (flag → entry)."""
    pkg, sub = types.ModuleType("medmnist"), types.ModuleType("medmnist.info")
    sub.INFO = info
    pkg.info, pkg.INFO = sub, sub.INFO
    monkeypatch.setitem(sys.modules, "medmnist", pkg)
    monkeypatch.setitem(sys.modules, "medmnist.info", sub)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def serve(tmp_path):
    """Serve ``tmp_path/zenodo`` over HTTP on localhost (a stand-in for Zenodo; no outside network)."""
    folder = tmp_path / "zenodo"
    folder.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
