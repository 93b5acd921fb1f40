"""A defense runs in a process that holds no truth: what it is given, and what it cannot find.

A defense written to cheat (``SNOOP``) searches everything it can reach in its process: every object the garbage
collector tracks, every module's globals, and any ``attack.npz`` at, above or below every path it was told
(arguments, environment, working directory). Run through ``defend`` and through a sweep it finds nothing; run in
this test process, which holds a run's truth, the same search finds it (so the search is not blind).
"""

from __future__ import annotations

import csv
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import module_run

from medbackdoor.cli.main import main

TINY = ["dataset.options.n_images=120", "dataset.options.source_size=32", "image_size=32", "train.epochs=1",
        "train.batch_size=16", "eval.epsilons=[0.1]", "trigger.mode=append", "trigger.fraction=0.3"]

SNOOP = textwrap.dedent('''
    import gc
    import os
    import sys
    from pathlib import Path

    import numpy as np

    from medbackdoor.defenses import DataDefense, Detection

    SECRET_TYPES = ("Truth", "PoisonedDataset", "RunData", "TestData", "Run", "RunDir", "StampedRows", "ImageRows",
                    "ImageSplit", "Manifest", "RunConfig", "TriggerConfig", "Trigger")


    def _is_secret(obj) -> str:
        kind = type(obj)
        module = getattr(kind, "__module__", None)
        if isinstance(module, str) and module.startswith("medbackdoor") and any(
                getattr(c, "__name__", "") in SECRET_TYPES for c in kind.__mro__):
            return f"{kind.__module__}.{kind.__qualname__}"
        if isinstance(obj, dict) and isinstance(obj.get("poisoned"), np.ndarray) and "trigger_mask" in obj:
            return "an attack record"
        return ""


    def _paths_told() -> list:
        told = [*sys.argv, *os.environ.values(), os.getcwd()]
        return [Path(p) for t in told for p in str(t).split(os.pathsep) if p.startswith("/")]


    def _records_near(path: Path) -> list:
        found = []
        for place in [path, *path.parents]:
            if (place / "attack.npz").is_file():
                found.append(str(place / "attack.npz"))
        if path.is_dir() and path != Path("/"):
            found += [str(p) for p, _ in zip(path.rglob("attack.npz"), range(50))]
        return found


    def snoop() -> list:
        found = []
        for obj in gc.get_objects():
            what = _is_secret(obj)
            if what:
                found.append("gc: " + what)
        for name, module in list(sys.modules.items()):
            for key, value in list(vars(module).items()) if hasattr(module, "__dict__") else []:
                what = _is_secret(value)
                if what:
                    found.append(f"global {name}.{key}: {what}")
        for path in _paths_told():
            found += _records_near(path)
        return sorted(set(found))


    class Snoop(DataDefense):
        """Scores every sample by what it found: the truth if it could reach it."""

        paper = "none: a cheat"
        changes = "none"

        def suspicion(self, d):
            found = snoop()
            scores = np.zeros(len(d.train_images))
            return Detection(scores, scores > 0, info={"found": found, "argv": sys.argv[1:],
                                                        "cwd": os.getcwd(), "env": sorted(os.environ)})
''')


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    yield from module_run(tmp_path_factory, "isolation", TINY)


@pytest.fixture
def snoop_file(tmp_path) -> Path:
    path = tmp_path / "plugins" / "snoop.py"
    path.parent.mkdir()
    path.write_text(SNOOP)
    return path


def _load_snoop(path: Path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("snoop_here", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_search_finds_the_truth_where_it_is(tiny_run, snoop_file, monkeypatch):
    """In a process that holds a run (its Run, data and truth), the cheat's search finds them: it is not blind."""
    from medbackdoor.defenses.runner import truth_of
    from medbackdoor.run import Run

    monkeypatch.setenv("MEDBACKDOOR_CACHE", str(tiny_run.parent / "cache"))
    search = _load_snoop(snoop_file).snoop
    held = Run(tiny_run)
    truth = truth_of(held)
    monkeypatch.chdir(tiny_run.parent)
    found = search()
    assert truth.poisoned.any()
    assert any("Truth" in f for f in found) and any("PoisonedDataset" in f for f in found)
    assert str(tiny_run / "attack.npz") in found  # below the working directory
    del held, truth


def test_a_defense_run_by_defend_finds_nothing(tiny_run, snoop_file, monkeypatch, capsys):
    monkeypatch.setenv("MEDBACKDOOR_CACHE", str(tiny_run.parent / "cache"))
    monkeypatch.chdir(tiny_run.parent)  # the parent works above the run folder; the defense must not
    monkeypatch.setenv("SOME_TOOL_HOME", str(tiny_run.parent))
    assert main(["defend", str(tiny_run), "--method", f"{snoop_file}:Snoop", "--holdout", "20"]) == 0
    summary = json.loads((tiny_run / "defenses" / "Snoop" / "summary.json").read_text())
    info = summary["info"]
    assert info["found"] == [] and info["argv"] == []
    assert "SOME_TOOL_HOME" not in info["env"] and "PWD" not in info["env"]
    assert not Path(info["cwd"]).resolve().is_relative_to(tiny_run.parent.resolve())
    assert summary["origin"]["file"] == str(snoop_file) and len(summary["origin"]["sha256"]) == 16
    assert not Path(info["cwd"]).exists()  # the materials are removed after the answer


def test_a_defense_run_by_a_sweep_finds_nothing(tmp_path, snoop_file, monkeypatch):
    from medbackdoor.study.sweep import run_sweep

    monkeypatch.setenv("MEDBACKDOOR_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    sweep = snoop_file.parent / "sweep.yaml"  # the plugin's file is named relative to the sweep file
    sweep.write_text("base_config: quick\ncontrols: false\ngrid:\n  - train.seed: [0]\n"
                     "defenses:\n  - {method: 'snoop.py:Snoop', name: snoop, holdout: 20}\n")
    results = run_sweep(sweep, tmp_path / "out", overrides=TINY, progress=False)
    assert {r["name"]: r["status"] for r in results}["seed-0:snoop"] == "complete"
    summary = json.loads((tmp_path / "out" / "runs" / "seed-0" / "defenses" / "snoop" / "summary.json").read_text())
    assert summary["info"]["found"] == []


SHOW_PIXELS = textwrap.dedent('''
    import numpy as np

    from medbackdoor.defenses import DataDefense, Detection, InputDefense


    class MeanPixel(DataDefense):
        """Each training sample's mean pixel: shows which image the defense saw at each position."""

        paper = changes = "none"

        def suspicion(self, d):
            means = np.asarray(d.train_images[0:len(d.train_images)], np.float64).mean((1, 2))
            labels = d.train_labels.sum(1)
            return Detection(means, means > np.median(means), columns={"label_sum": labels},
                             info={"seed": d.seed})


    class MeanInput(InputDefense):
        paper = changes = "none"

        def score(self, d, images):
            return np.asarray(images[0:len(images)], np.float64).mean((1, 2))
''')


def test_the_defense_sees_the_training_set_shuffled_and_its_answer_comes_back_in_order(tiny_run, tmp_path,
                                                                                      monkeypatch):
    """The defense sees the training set as trained in an order of its own (the appended poisoned copies are not
    the last block), and each score is written back against its sample as trained."""
    from medbackdoor.defenses.isolation import defender_seeds
    from medbackdoor.defenses.runner import defend
    from medbackdoor.run import Run

    monkeypatch.setenv("MEDBACKDOOR_CACHE", str(tiny_run.parent / "cache"))
    plugin = tmp_path / "pixels.py"
    plugin.write_text(SHOW_PIXELS)
    held = Run(tiny_run)
    summary = defend(held, f"{plugin}:MeanPixel", holdout=20)
    train = held.data.train
    rows = list(csv.DictReader(open(tiny_run / "defenses" / "MeanPixel" / "scores.csv")))
    assert [int(r["sample"]) for r in rows] == list(range(len(train)))
    for i in (0, len(train) - 1, int(np.flatnonzero(train.poisoned_mask())[0])):
        assert float(rows[i]["score"]) == pytest.approx(train[i]["image"].astype(np.float64).mean(), rel=1e-5)
        assert float(rows[i]["label_sum"]) == train[i]["labels"].sum()
    assert summary.defender_seed == 0 and summary.info["seed"] != held.config.attack_seed
    order = np.random.default_rng(defender_seeds(0, held.fingerprint(1))[1]).permutation(len(train))
    seen_poisoned = train.poisoned_mask()[order]  # what the defense saw at each position
    assert seen_poisoned.any() and not seen_poisoned[-int(seen_poisoned.sum()):].all()


def test_an_input_defense_sees_clean_and_triggered_inputs_mixed(tiny_run, tmp_path, monkeypatch):
    from medbackdoor.defenses.runner import defend
    from medbackdoor.run import Run

    monkeypatch.setenv("MEDBACKDOOR_CACHE", str(tiny_run.parent / "cache"))
    plugin = tmp_path / "pixels.py"
    plugin.write_text(SHOW_PIXELS)
    held = Run(tiny_run)
    defend(held, f"{plugin}:MeanInput", holdout=20)
    rows = list(csv.DictReader(open(tiny_run / "defenses" / "MeanInput" / "scores.csv")))
    test = held.test
    clean = [float(r["score"]) for r in rows if r["set"] == "clean"]
    triggered = [float(r["score"]) for r in rows if r["set"] == "triggered"]
    np.testing.assert_allclose(clean, np.asarray(test.clean[0:len(test)], np.float64).mean((1, 2)), rtol=1e-5)
    np.testing.assert_allclose(triggered, np.asarray(test.triggered[0:len(test)], np.float64).mean((1, 2)),
                               rtol=1e-5)


def test_the_materials_hold_the_checkpoint_and_nothing_that_names_the_run(tiny_run, tmp_path, monkeypatch):
    from medbackdoor.defenses.runner import _materials
    from medbackdoor.run import Run

    monkeypatch.setenv("MEDBACKDOOR_CACHE", str(tiny_run.parent / "cache"))
    folder = tmp_path / "materials"
    _materials(Run(tiny_run), folder, 1, 20, 0, with_test=True)
    saved = torch.load(tiny_run / "checkpoints" / "epoch_001.pt", weights_only=True)["model"]
    given = torch.load(folder / "model.pt", weights_only=True)
    assert saved.keys() == given.keys() and all(torch.equal(v, given[k]) for k, v in saved.items())
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["holdout_images.npy", "holdout_labels.npy", "model.json", "model.pt", "test_images.npy",
                     "train_images.npy", "train_labels.npy"]
    assert str(tiny_run) not in (folder / "model.json").read_text()


COUNTER = textwrap.dedent('''
    import os

    import numpy as np

    from medbackdoor.defenses import DataDefense, Detection

    CALLS = []


    class Count(DataDefense):
        """Remembers, in a module global, every call in this process."""

        paper = changes = "none"

        def suspicion(self, d):
            CALLS.append(len(d.train_images))
            n = len(d.train_images)
            return Detection(np.zeros(n), np.zeros(n, bool), info={"calls": len(CALLS), "pid": os.getpid()})
''')


def test_each_request_runs_in_a_fresh_process(tiny_run, tmp_path, monkeypatch):
    """Nothing a defense leaves behind reaches the next request: each runs in a process of its own, forked from
    the defense process (which imported the defenses once)."""
    from medbackdoor.defenses.isolation import PROCESS
    from medbackdoor.defenses.runner import defend

    monkeypatch.setenv("MEDBACKDOOR_CACHE", str(tiny_run.parent / "cache"))
    plugin = tmp_path / "count.py"
    plugin.write_text(COUNTER)
    first = defend(tiny_run, f"{plugin}:Count", holdout=20, force=True)
    server = PROCESS.process.pid
    second = defend(tiny_run, f"{plugin}:Count", holdout=20, force=True)
    assert first.info["calls"] == second.info["calls"] == 1
    assert first.info["pid"] != second.info["pid"] and server not in (first.info["pid"], second.info["pid"])
    assert PROCESS.process.pid == server  # the defense process itself was kept
