"""The defense framework: the defender-knowledge rule, label-audit, scoring, `medbackdoor defend`, the study."""

from __future__ import annotations

import contextlib
import csv
import functools
import gc
import json
import os
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import image_cache_at, module_run
from torch import nn

from medbackdoor.cli.main import main
from medbackdoor.config import load_config
from medbackdoor.defenses import Defender, Images
from medbackdoor.defenses.base import Truth
from medbackdoor.defenses.label_audit import LabelAudit, vector_keys
from medbackdoor.defenses.scoring import detection_summary, tpr_at_fpr
from medbackdoor.errors import UserError
from medbackdoor.labels import LABELS
from medbackdoor.train import run

TINY = ["dataset.options.n_images=120", "dataset.options.source_size=32", "image_size=32", "train.epochs=1",
        "train.batch_size=16", "eval.epsilons=[0.1]", "trigger.mode=append"]


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.head = nn.Linear(4, 14)

    def forward_features(self, x):
        return self.relu(self.conv(x))

    def forward(self, x):
        return self.head(self.forward_features(x).mean((2, 3)))


def _defender(train_labels, holdout_labels, dataset=""):
    rng = np.random.default_rng(0)
    n, h = len(train_labels), len(holdout_labels)
    return Defender(Tiny(), Images.of(rng.integers(0, 255, (n, 16, 16), dtype=np.uint8)), train_labels,
                    Images.of(rng.integers(0, 255, (h, 16, 16), dtype=np.uint8)), holdout_labels, list(LABELS),
                    dataset=dataset)


# --- the rule: a defense sees the Defender only ----------------------------------------------------------------------
#
# Not a check of attribute names (``getattr`` or a closure gets around those): every object reachable from a
# Defender is visited, and none may know the attack.

def reachable(root) -> list:
    """Every object reachable from ``root``: attributes, ``__slots__``, containers, closures and their cells, bound
    methods, partials, an array's base. Modules, classes and a function's globals (module scope) are not followed;
    a torch tensor is a leaf (its storage is numbers: the model's parameters)."""
    seen, out, todo = set(), [], [root]
    while todo:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        out.append(obj)
        if obj is None or isinstance(obj, types.ModuleType | type | torch.Tensor):
            continue
        todo.extend(_children(obj))
    return out


def _children(obj) -> list:
    if isinstance(obj, types.FunctionType):  # not __globals__: that is the module's scope
        return [obj.__closure__, obj.__defaults__, obj.__kwdefaults__, obj.__dict__, getattr(obj, "__wrapped__", None)]
    kids = list(gc.get_referents(obj))
    if hasattr(obj, "__dict__"):
        kids.append(vars(obj))
    for cls in type(obj).__mro__:
        slots = getattr(cls, "__slots__", ())
        for slot in [slots] if isinstance(slots, str) else slots:
            if slot not in ("__dict__", "__weakref__") and hasattr(obj, slot):
                kids.append(getattr(obj, slot))
    if isinstance(obj, np.ndarray):
        kids.append(obj.base)
    if isinstance(obj, types.MethodType):
        kids += [obj.__self__, obj.__func__]
    if isinstance(obj, functools.partial):
        kids += [obj.func, obj.args, obj.keywords]
    if isinstance(obj, types.CellType):
        with contextlib.suppress(ValueError):  # an empty cell
            kids.append(obj.cell_contents)
    return kids


KNOWS_THE_ATTACK = ("medbackdoor.poison", "medbackdoor.triggers", "medbackdoor.train", "medbackdoor.run",
                    "medbackdoor.experiment", "medbackdoor.rundir", "medbackdoor.data", "medbackdoor.study")


def truth_in(root, data, truth, run_path: Path, materials: Path | None = None) -> list[str]:
    """What reachable from ``root`` gives the attack away: an object of the poisoning, trigger, run or dataset code,
    the Truth, a path (but one of the defender's own ``materials``, which its arrays are read from), or an array or
    set equal to the poisoned mask, the poisoned positions, the source position of each sample (which repeats for
    appended copies), the test images' survival or the trigger's mask."""
    mask = truth.poisoned
    secrets = {"poisoned mask": mask, "poisoned positions": np.flatnonzero(mask), "order": data.train.order,
               "sample positions": data.train.sample_positions(), "survived": data.test.survived}
    if truth.trigger_mask is not None:
        secrets["trigger mask"] = truth.trigger_mask
    found = []
    for obj in reachable(root):
        kind = type(obj)
        if isinstance(obj, os.PathLike) and materials is not None and Path(obj).is_relative_to(materials):
            continue
        if kind.__module__.startswith(KNOWS_THE_ATTACK) or isinstance(obj, Truth | os.PathLike):
            found.append(f"a {kind.__module__}.{kind.__qualname__}")
        elif isinstance(obj, str) and str(run_path) in obj:
            found.append(f"the run's path in {obj!r}")
        elif isinstance(obj, frozenset | set) and obj and obj == data.train.poisoned:
            found.append("the poisoned set")
        elif isinstance(obj, np.ndarray) and obj.dtype != object:
            found += [f"an array equal to the {name}" for name, secret in secrets.items()
                      if obj.shape == np.shape(secret) and np.array_equal(obj, secret)]
    return found


@pytest.fixture(scope="module")
def run_defender(tiny_run, tmp_path_factory):
    """The Defender a defense process builds from the tiny run's materials (built here, in this process), beside
    the truth, the run data and the materials' record of the order."""
    from medbackdoor.defenses.child import load_defender
    from medbackdoor.defenses.runner import _materials, truth_of
    from medbackdoor.run import Run

    folder = tmp_path_factory.mktemp("materials")
    with image_cache_at(tiny_run.parent / "cache"):
        held = Run(tiny_run)
        materials = _materials(held, folder, 1, 20, 0, with_test=False)
        request = {"device": "cpu", "batch_size": 32, "seed": materials.seed, "label_names": list(LABELS),
                   "dataset": "synthetic", "training": {"epochs": 1, "lr": 0.001}}
        d = load_defender(folder, request)
        return d, truth_of(held), held.data, materials


def test_nothing_reachable_from_a_runs_defender_knows_the_attack(run_defender, tiny_run):
    d, truth, data, materials = run_defender
    assert truth.poisoned.any() and data.train.mode == "append"  # there is something to hide
    found = truth_in(d, data, truth, tiny_run.resolve(), materials.folder)
    assert not found, found
    for name, images in (("train", d.train_images), ("holdout", d.holdout_images)):
        assert images.holds_pixels_only, name


def test_the_defenders_pixels_are_the_training_set_as_trained_in_an_order_of_its_own(run_defender):
    d, truth, data, materials = run_defender
    n = len(data.train)
    assert len(d.train_images) == n and len(d.train_labels) == n
    order = materials.train_order
    assert sorted(order) == list(range(n)) and not np.array_equal(order, np.arange(n))
    for i in (0, n - 1, int(np.flatnonzero(truth.poisoned[order])[0])):  # i: a position as the defender sees it
        np.testing.assert_array_equal(d.train_images[i], data.train[int(order[i])]["image"])
        np.testing.assert_array_equal(d.train_labels[i], data.train[int(order[i])]["labels"])
    np.testing.assert_array_equal(d.holdout_images[0:3], data.val.images[data.val.indices[:3]])
    assert d.dataset == "synthetic"


def test_the_walk_sees_through_closures_partials_and_hooks(run_defender, tiny_run):
    """The walk is not blind: the truth hidden behind a closure, a partial or a hook on the model is found."""
    d, truth, data, materials = run_defender
    hidden = data.train
    leaks = {"closure": lambda: hidden, "partial": functools.partial(print, hidden)}
    for how, leak in leaks.items():
        d._cache[how] = leak
        try:
            found = truth_in(d, data, truth, tiny_run.resolve(), materials.folder)
            assert any("PoisonedDataset" in f for f in found), how
        finally:
            d._cache.pop(how)
    handle = d.model.register_forward_hook(lambda *_: hidden.trigger)
    try:
        assert truth_in(d, data, truth, tiny_run.resolve(), materials.folder)
    finally:
        handle.remove()
    assert truth_in(Images.of(truth.poisoned.astype(np.uint8)), data, truth, tiny_run.resolve())
    assert not truth_in(d, data, truth, tiny_run.resolve(), materials.folder)
    assert truth_in(d, data, truth, tiny_run.resolve())  # its materials' paths are paths: seen, and allowed above


def test_a_defender_refuses_images_that_are_not_pixels():
    class Lazy:
        def __len__(self):
            return 3

        def __getitem__(self, sel):
            return np.zeros((3, 8, 8), np.uint8)[sel]

    pixels = Images.of(np.zeros((3, 8, 8), np.uint8))
    for train, hold in ((Images.of(Lazy()), pixels), (pixels, Images.of(Lazy())),
                        (Images.of(np.zeros((3, 8, 8), object)), pixels)):
        with pytest.raises(TypeError, match="pixels only"):
            Defender(Tiny(), train, np.zeros((3, 14)), hold, np.zeros((3, 14)), list(LABELS))


def test_no_defense_module_reaches_the_run_or_poisoning_code():
    """Every module of medbackdoor/defenses but the runner (the parent's side, which scores), and the defense
    process's own module, reach none of the code that builds a run's data or opens a run folder: not by an
    ``import x``, a ``from x import y`` or through any module they import (the transitive closure)."""
    from test_structure import imported, module_files

    files = module_files()
    known = set(files)
    graph = {m: imported(m, p, known) for m, p in files.items()}
    forbidden = ("medbackdoor.poison", "medbackdoor.experiment", "medbackdoor.run", "medbackdoor.rundir",
                 "medbackdoor.study", "medbackdoor.report", "medbackdoor.preview", "medbackdoor.train.runner",
                 "medbackdoor.defenses.runner")
    for module in sorted(m for m in known if m.startswith("medbackdoor.defenses") and m != "medbackdoor.defenses"
                         and m != "medbackdoor.defenses.runner"):
        seen, todo = set(), [module]
        while todo:
            for nxt in graph[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        bad = sorted(m for m in seen if any(m == f or m.startswith(f"{f}.") for f in forbidden))
        assert not bad, f"{module} reaches {bad}"


def test_the_import_check_sees_plain_and_indirect_imports(tmp_path):
    """The check is not blind: ``import medbackdoor.experiment`` two modules away is found."""
    from test_structure import imported, module_files

    pkg = tmp_path / "medbackdoor"
    (pkg / "defenses").mkdir(parents=True)
    for path in (pkg / "__init__.py", pkg / "defenses" / "__init__.py", pkg / "experiment.py"):
        path.write_text("")
    (pkg / "defenses" / "mine.py").write_text("def f():\n    import medbackdoor.helper\n")
    (pkg / "helper.py").write_text("import medbackdoor.experiment as e\n")
    files = module_files(pkg)
    graph = {m: imported(m, p, set(files)) for m, p in files.items()}
    assert "medbackdoor.experiment" in graph["medbackdoor.helper"]
    assert "medbackdoor.helper" in graph["medbackdoor.defenses.mine"]


# --- scoring ----------------------------------------------------------------------------------------------------------

def test_detection_summary_matches_hand_counts():
    y = np.array([0, 0, 0, 0, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.9, 0.8, 0.95])
    out = detection_summary(y, s, s > 0.5)
    assert out["auroc"] == pytest.approx(7 / 8)
    assert out["precision"] == pytest.approx(2 / 3) and out["recall"] == 1.0
    assert out["false_positive_rate"] == pytest.approx(1 / 4)
    assert tpr_at_fpr(y, s, 0.0) == 0.5  # 0.95 above every negative; 0.8 is below 0.9
    assert np.isnan(detection_summary(np.zeros(3), np.ones(3))["auroc"])


# --- label-audit ------------------------------------------------------------------------------------------------------

def _labels(rng, n, prevalence=0.15):
    return (rng.random((n, 14)) < prevalence).astype(np.float32)


def test_label_audit_finds_an_over_represented_one_hot_vector():
    rng = np.random.default_rng(1)
    clean, hold = _labels(rng, 400), _labels(rng, 300)
    onehot = np.zeros((80, 14), np.float32)
    onehot[:, 0] = 1
    d = _defender(np.concatenate([clean, onehot]), hold)
    det = LabelAudit().suspicion(d)
    truth = np.r_[np.zeros(400, bool), np.ones(80, bool)]
    s = detection_summary(truth, det.scores, det.flagged)
    assert s["auroc"] > 0.95 and s["recall"] == 1.0
    assert [v["findings"] for v in det.info["flagged_vectors"]] == ["Atelectasis"]
    assert det.columns["label_vector"][-1] == "1" + "0" * 13


def test_label_audit_on_clean_labels_flags_nothing_and_checks_options():
    rng = np.random.default_rng(2)
    det = LabelAudit().suspicion(_defender(_labels(rng, 500), _labels(rng, 400)))
    assert det.flagged.mean() < 0.02
    with pytest.raises(UserError):
        LabelAudit(reference="elsewhere")
    with pytest.raises(UserError):
        LabelAudit(alpha=2)
    assert vector_keys(np.array([[1, 0, np.nan]])).tolist() == ["10?"]


def test_label_audit_nih_reference_uses_the_shipped_joint_statistics():
    rng = np.random.default_rng(3)
    d = _defender(_labels(rng, 200, 0.05), _labels(rng, 10), dataset="synthetic")  # labels drawn from NIH's stats
    det = LabelAudit(reference="nih").suspicion(d)
    assert len(det.scores) == 200 and np.isfinite(det.scores).all()


@pytest.mark.parametrize("dataset", ["nih", "nih-sample", "chestmnist"])
def test_label_audit_refuses_nih_statistics_on_nih_derived_data(dataset):
    """NIH's joint statistics count every NIH image's labels: on NIH-derived data, the run's own labels too."""
    rng = np.random.default_rng(3)
    d = _defender(_labels(rng, 200, 0.05), _labels(rng, 10), dataset=dataset)
    with pytest.raises(UserError) as err:
        LabelAudit(reference="nih").suspicion(d)
    assert "\n" not in str(err.value) and dataset in str(err.value) and "reference: holdout" in str(err.value)
    assert LabelAudit().suspicion(d).scores.shape == (200,)  # the holdout reference stays


@pytest.mark.slow
def test_defend_label_audit_nih_on_an_nih_sample_run_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MEDBACKDOOR_CACHE", str(tmp_path / "cache"))
    config = load_config("quick-real", ["dataset.options.limit=30", "image_size=32", "train.epochs=1",
                                        "train.batch_size=16", "eval.epsilons=[0.1]"])
    run(config, tmp_path / "run", progress=False)
    assert main(["defend", str(tmp_path / "run"), "--method", "label-audit", "--set", "reference=nih"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nih-sample" in err[0] and "reference: holdout" in err[0]


# --- medbackdoor defend on a real (tiny) run --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    yield from module_run(tmp_path_factory, "defend", TINY)


def test_defend_writes_scores_and_summary_and_reuses_them(tiny_run, capsys, monkeypatch):
    monkeypatch.setenv("MEDBACKDOOR_CACHE", str(tiny_run.parent / "cache"))
    assert main(["defend", str(tiny_run), "--method", "label-audit", "--holdout", "20"]) == 0
    assert "detection AUROC" in capsys.readouterr().out
    out = tiny_run / "defenses" / "label-audit"
    rows = list(csv.DictReader(open(out / "scores.csv")))
    manifest = json.loads((tiny_run / "manifest.json").read_text())
    assert len(rows) == manifest["dataset"]["train_samples"]
    assert [r["poisoned"] for r in rows].count("True") == manifest["dataset"]["poisoned"]
    assert rows[-1]["poisoned"] == "True" and rows[0]["sample"] == "0"  # appended copies after the originals
    summary = json.loads((out / "summary.json").read_text())
    assert summary["holdout"] == min(20, manifest["dataset"]["val"]) and summary["detection"]["auroc"] > 0.9
    assert (out / "roc.png").is_file()
    mtime = (out / "summary.json").stat().st_mtime_ns
    assert main(["defend", str(tiny_run), "--method", "label-audit", "--holdout", "20"]) == 0
    assert (out / "summary.json").stat().st_mtime_ns == mtime  # reused


@pytest.mark.parametrize("args, message", [
    (["--method", "nope"], "unknown defense 'nope'"),
    (["--method", "label-audit", "--set", "alpha=7"], "alpha"),
    (["--method", "label-audit", "--set", "colour=red"], "colour"),
    (["--method", "label-audit", "--epoch", "9"], "no checkpoint for epoch 9"),
    (["--method", "label-audit", "--holdout", "1"], "--holdout"),
])
def test_defend_bad_input_is_one_line(tiny_run, args, message, capsys, monkeypatch):
    monkeypatch.setenv("MEDBACKDOOR_CACHE", str(tiny_run.parent / "cache"))
    assert main(["defend", str(tiny_run), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_defend_a_folder_that_is_no_run(tmp_path, capsys):
    assert main(["defend", str(tmp_path), "--method", "label-audit"]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_dropping_samples_leaves_them_out_everywhere(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDBACKDOOR_CACHE", str(tiny_run.parent / "cache"))
    from medbackdoor.experiment import build_run_data

    config = load_config(tiny_run / "config.yaml")
    full = build_run_data(config, progress=False).train
    poisoned = np.flatnonzero(full.poisoned_mask())
    drop = tmp_path / "drop.txt"
    drop.write_text("# flagged\n" + "\n".join(map(str, poisoned[:5])) + "\n3\n")
    kept = build_run_data(load_config(tiny_run / "config.yaml", [f"train.drop={drop}"]), progress=False).train
    assert len(kept) == len(full) - 6
    assert kept.poisoned_mask().sum() == len(poisoned) - 5
    assert np.array_equal(kept.labels_array(), np.delete(full.labels_array(), [*poisoned[:5], 3], axis=0))
    assert np.array_equal(kept[3]["image"], full[4]["image"])
    drop.write_text("x\n")
    with pytest.raises(UserError, match="line 1"):
        build_run_data(load_config(tiny_run / "config.yaml", [f"train.drop={drop}"]), progress=False)


@pytest.mark.slow
def test_sweep_runs_listed_defenses_and_the_report_tables_them(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDBACKDOOR_CACHE", str(tmp_path / "cache"))
    from medbackdoor.report.build import build_report
    from medbackdoor.study.sweep import run_sweep

    base = {k: v for k, v in (t.split("=") for t in TINY)}
    sweep = tmp_path / "s.yaml"
    sweep.write_text(
        "base_config: quick\nbase:\n" + "".join(f"  {k}: {v}\n" for k, v in ()) +
        "grid:\n  - trigger.fraction: [0.0, 0.4]\n    train.seed: [0]\n"
        "defenses:\n  - label-audit\n  - {method: label-audit, name: audit-nih, options: {reference: nih}}\n"
        "  - {method: label-audit, name: audit-clean, where: {trigger.fraction: [0.0], trigger.kind: [square]}}\n")
    overrides = [f"{k}={v}" for k, v in base.items()] + ["train.epochs=1"]
    results = run_sweep(sweep, tmp_path / "out", overrides=overrides, progress=False)
    statuses = {r["name"]: r["status"] for r in results}
    assert statuses["fraction-0.4_seed-0:audit-nih"] == "complete"
    assert statuses["fraction-0.0_seed-0:audit-clean"] == "complete"  # `where` selects the clean run alone
    assert "fraction-0.4_seed-0:audit-clean" not in statuses
    assert not (tmp_path / "out" / "runs" / "fraction-0.4_seed-0" / "defenses" / "audit-clean").exists()
    assert len([n for n in statuses if ":" in n and not n.endswith(":control")]) == 5
    assert statuses["fraction-0.4_seed-0:control"] == "complete"
    report = build_report(tmp_path / "out").read_text()
    assert "## Defenses" in report and "audit-nih" in report
    table = list(csv.DictReader(open(tmp_path / "out" / "report" / "defenses_auroc.csv")))
    assert {r[""] for r in table} == {"label-audit", "audit-nih"}
    bad = tmp_path / "bad.yaml"
    bad.write_text("base_config: quick\ngrid:\n  - train.seed: [0]\ndefenses:\n  - {method: label-audit, x: 1}\n")
    with pytest.raises(UserError, match="bad defenses entry"):
        run_sweep(bad, tmp_path / "o2", dry_run=True)
    for where, message in (("{trigger.knd: [square]}", "where key trigger.knd is not a run setting"),
                           ("{trigger.kind: square}", "where must map")):
        bad.write_text("base_config: quick\ngrid:\n  - train.seed: [0]\n"
                       f"defenses:\n  - {{method: label-audit, where: {where}}}\n")
        with pytest.raises(UserError, match=message):
            run_sweep(bad, tmp_path / "o2", dry_run=True)


def test_defender_features_are_the_pooled_penultimate_layer():
    d = _defender(np.zeros((6, 14)), np.zeros((3, 14)))
    f = d.train_features
    x = torch.from_numpy(np.asarray(d.train_images[0:6])).float().div(255).unsqueeze(1)
    assert f.shape == (6, 4)
    np.testing.assert_allclose(f, d.model.forward_features(x).mean((2, 3)).detach().numpy(), rtol=1e-5)
    assert d.train_features is f  # cached


def test_the_run_records_its_attack_and_defend_scores_against_that_record(tiny_run):
    """``run`` writes RUN/attack.npz when it is made: the poisoned samples as trained (append mode: the last
    round(ρN) samples), the square's fixed 3×3 centre mask and the test survival. ``defend`` scores against the
    record, not against a dataset rebuilt and poisoned again."""
    import shutil

    from medbackdoor.defenses.runner import truth_of
    from medbackdoor.run import Run
    from medbackdoor.rundir import RunDir

    run = RunDir(tiny_run)
    record = run.attack()
    config = run.config()
    n_train = RunDir(tiny_run).manifest().dataset["train"]
    k = round(config.trigger.fraction * n_train)
    expected = np.r_[np.zeros(n_train, bool), np.ones(k, bool)] if config.trigger.mode == "append" else None
    if expected is not None:
        np.testing.assert_array_equal(record["poisoned"], expected)
    assert record["poisoned"].sum() == k and not record["cross"].any()
    square = np.zeros((config.image_size, config.image_size), bool)
    top = (config.image_size - 3) // 2  # the paper's 3×3 square, top-left at ((H − 3) // 2, (W − 3) // 2)
    square[top : top + 3, top : top + 3] = True
    np.testing.assert_array_equal(record["trigger_mask"], square)
    assert record["test_survived"].all() and int(record["target"]) == 0  # Atelectasis
    copy = RunDir(tiny_run.parent / "recorded")
    shutil.copytree(tiny_run, copy.path, dirs_exist_ok=True)
    with image_cache_at(tiny_run.parent / "cache"):
        copy.write_attack({**record, "trigger_mask": np.zeros((0, 0), bool),
                           "trigger_mask_reason": np.array("altered by the test")})
        truth = truth_of(Run(copy.path))
        np.testing.assert_array_equal(truth.poisoned, record["poisoned"])
        assert truth.trigger_mask is None and truth.trigger_mask_reason == "altered by the test"
        copy.write_attack({**record, "poisoned": ~record["poisoned"]})  # a record the data no longer match
        with pytest.raises(UserError, match="the data or the code changed since the run was made"):
            _ = Run(copy.path).data


def test_a_run_as_its_own_clean_model_reproduces_the_defense_and_writes_beside_it(tiny_run, monkeypatch):
    """``defend_run(..., clean_model=...)`` writes ``NAME/clean-model/`` and leaves the defense's own answer alone;
    given the run itself as the clean model (same weights, training set, holdout and test inputs, so the same
    seeds), its scores are the defense's own, value for value. A data defense answers "not applicable"."""
    import pandas as pd

    from medbackdoor.defenses.runner import DefenseRequest, defend_run
    from medbackdoor.run import Run
    from medbackdoor.rundir import RunDir

    monkeypatch.setenv("MEDBACKDOOR_CACHE", str(tiny_run.parent / "cache"))
    run = Run(tiny_run)
    requests = [DefenseRequest("scale-up", "scale-up-own"), DefenseRequest("label-audit", "audit-own")]
    own = defend_run(run, requests)
    base = defend_run(run, requests, clean_model=Run(tiny_run))
    assert isinstance(base[1], UserError) and "data defense" in str(base[1])
    rd = RunDir(tiny_run)
    assert (rd.defense_dir("scale-up-own") / "summary.json").is_file()  # untouched by the baseline
    a = pd.read_csv(rd.defense_scores_path("scale-up-own"))
    b = pd.read_csv(rd.clean_model_dir("scale-up-own") / "scores.csv")
    pd.testing.assert_frame_equal(a, b)
    assert base[0].clean_model["checkpoint"] == own[0].request["checkpoint"]
    assert base[0].request == {**own[0].request, "clean_model": base[0].clean_model}
    again = defend_run(run, requests[:1], clean_model=Run(tiny_run))[0]  # reused, not computed again
    assert again.timings == base[0].timings


@pytest.fixture(scope="module")
def control_and_blend(tiny_run):
    """The tiny run's clean control and a second poisoned run of the same setting (a blend), trained beside it."""
    with image_cache_at(tiny_run.parent / "cache"):
        for name, extra in (("control", ["trigger.fraction=0"]), ("blend", ["trigger.kind=blend"])):
            run(load_config(overrides=TINY + extra), tiny_run.parent / name, progress=False)
    return tiny_run.parent / "control", tiny_run.parent / "blend"


def test_the_clean_model_baseline_of_runs_sharing_a_control_runs_once_and_answers_as_alone(
        tiny_run, control_and_blend, monkeypatch):
    """Two poisoned runs with one clean control: each defense runs once on the control for both runs' test inputs
    (the shared clean set written once), and each run's answer equals the one computed for that run alone."""
    import pandas as pd

    from medbackdoor.defenses.runner import DefenseRequest, defend_clean_model, defend_run
    from medbackdoor.run import Run
    from medbackdoor.rundir import RunDir

    monkeypatch.setenv("MEDBACKDOOR_CACHE", str(tiny_run.parent / "cache"))
    control, blend = (Run(p) for p in control_and_blend)
    runs = [Run(tiny_run), blend]
    # conservative ties: ``ties: random`` draws its tie-breaks in the mixed order of all the inputs scored at once
    requests = [DefenseRequest("scale-up", options={"ties": "conservative"}), DefenseRequest("fine-pruning")]
    together = defend_clean_model(control, [(r, requests) for r in runs])
    frames = {}
    for r, answers in zip(runs, together):
        for request, summary in zip(requests, answers):
            assert not isinstance(summary, Exception), summary
            assert summary.timings["runs_sharing"] == 2
            assert summary.clean_model["run"] == control.name and summary.run == str(r.path)
            frames[r.name, request.name] = pd.read_csv(r.dir.clean_model_dir(request.name) / "scores.csv")
        scores = frames[r.name, "scale-up"]
        test = r.data.test
        assert (scores["set"] == "clean").sum() == len(test.clean) and (scores["set"] == "triggered").sum() == len(
            test.triggered)
        assert scores["test_row"].tolist() == [*map(int, test.rows), *map(int, test.rows)]
    # the two triggers differ, so their shares differ: a mix-up of the shares could not pass the comparison below
    a, b = (frames[r.name, "scale-up"] for r in runs)
    assert not np.allclose(a.loc[a.set == "triggered", "score"], b.loc[b.set == "triggered", "score"])
    for r in runs:
        alone = defend_run(r, requests, clean_model=control, force=True)
        for request, summary in zip(requests, alone):
            assert summary.timings["runs_sharing"] == 1
            pd.testing.assert_frame_equal(pd.read_csv(RunDir(r.path).clean_model_dir(request.name) / "scores.csv"),
                                          frames[r.name, request.name], check_exact=False, rtol=1e-5)


def test_a_sweeps_clean_model_step_is_one_task_per_clean_control(tiny_run, control_and_blend, monkeypatch):
    """The sweep's clean-model step gives the clean control one task for both of its poisoned runs, and names one
    status per (run, defense); a data defense gets none."""
    from medbackdoor.study.executors import Executor
    from medbackdoor.study.sweep import defense_entries, run_clean_model_defenses

    class Inline(Executor):
        def __init__(self):
            self.tasks = []

        def map(self, fn, tasks, heartbeats=None):
            self.tasks += list(tasks)
            for i, task in enumerate(tasks):
                yield i, fn(*task, 1)

    monkeypatch.setenv("MEDBACKDOOR_CACHE", str(tiny_run.parent / "cache"))
    control, blend = control_and_blend
    folders = {"run": tiny_run, "control": control, "blend": blend}
    results = [{"name": name, "folder": str(folder), "status": "complete"} for name, folder in folders.items()]
    entries = defense_entries({"defenses": [{"method": "scale-up", "name": "scale-up-sweep"}, "label-audit"]})
    executor = Inline()
    statuses = run_clean_model_defenses(results, entries, executor, progress=False)
    assert len(executor.tasks) == 1 and executor.tasks[0][0] == str(control)
    assert sorted(s["name"] for s in statuses) == ["blend:scale-up-sweep:clean-model", "run:scale-up-sweep:clean-model"]
    assert all(s["status"] == "complete" for s in statuses), statuses
    for folder in (tiny_run, blend):
        summary = json.loads((folder / "defenses" / "scale-up-sweep" / "clean-model" / "summary.json").read_text())
        assert summary["timings"]["runs_sharing"] == 2 and summary["clean_model"]["run"] == control.name


def test_a_clean_model_of_another_setting_is_one_line(tiny_run, monkeypatch, capsys):
    """A clean model that cannot take the run's inputs (another image size here) is refused before anything runs."""
    import shutil

    monkeypatch.setenv("MEDBACKDOOR_CACHE", str(tiny_run.parent / "cache"))
    other = tiny_run.parent / "other-size"
    shutil.copytree(tiny_run, other, dirs_exist_ok=True, ignore=shutil.ignore_patterns("defenses"))
    config = (other / "config.yaml").read_text()
    (other / "config.yaml").write_text(config.replace("image_size: 32", "image_size: 48"))
    assert main(["defend", str(tiny_run), "--method", "strip", "--clean-model", str(other)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "image_size is 48, the run's is 32" in err[0]
