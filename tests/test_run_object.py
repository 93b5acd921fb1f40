"""``Run``: a finished run opened once; ``RunDir`` owns its paths; the data defenses' scoring of cross samples."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
from conftest import module_run

from medbackdoor.errors import UserError
from medbackdoor.rundir import RunDir, SweepDir

TINY = ["dataset.options.n_images=96", "dataset.options.source_size=32", "image_size=32", "train.epochs=1",
        "train.batch_size=16", "eval.epsilons=[0.1]", "trigger.mode=append", "trigger.kind=adaptive-blend",
        "trigger.fraction=0.2"]


@pytest.fixture(scope="module")
def covered_run(tmp_path_factory):
    """A run of an attack with cover samples (adaptive-blend: one cover sample per poisoned one)."""
    yield from module_run(tmp_path_factory, "run-object", TINY)


def test_a_run_builds_its_data_once_and_its_test_split_alone(covered_run, monkeypatch):
    from medbackdoor.run import Run

    monkeypatch.setenv("MEDBACKDOOR_CACHE", str(covered_run.parent / "cache"))
    opened = Run(covered_run)
    test = opened.test
    assert "data" not in vars(opened)  # the test split alone: no training set was built
    assert len(test) == json.loads((covered_run / "manifest.json").read_text())["dataset"]["test"]
    data = opened.data
    assert opened.data is data and opened.test is test
    np.testing.assert_array_equal(data.train.poisoned_mask(), np.load(covered_run / "attack.npz")["poisoned"])
    assert opened.resolve_epoch() == 1 and opened.epochs() == [1]
    with pytest.raises(UserError, match="not a run folder"):
        Run(covered_run.parent)


def test_a_data_defense_scores_cover_samples_apart_from_the_clean_ones(covered_run, tmp_path, monkeypatch):
    """The attack's cover samples (clean labels, not poisoned) are not clean samples: a defense that flags every
    sample has a realised FPR of 1 on the clean ones, counted without the covers, and flags all the covers."""
    from medbackdoor.defenses.runner import defend

    monkeypatch.setenv("MEDBACKDOOR_CACHE", str(covered_run.parent / "cache"))
    plugin = tmp_path / "all.py"
    plugin.write_text(textwrap.dedent('''
        import numpy as np
        from medbackdoor.defenses import DataDefense, Detection

        class FlagAll(DataDefense):
            paper = changes = "none"

            def suspicion(self, d):
                n = len(d.train_images)
                return Detection(np.ones(n), np.ones(n, bool))
    '''))
    summary = defend(covered_run, f"{plugin}:FlagAll", holdout=16)
    record = np.load(covered_run / "attack.npz")
    poisoned, cross = record["poisoned"], record["cross"]
    assert cross.sum() == poisoned.sum() > 0  # adaptive-blend: one cover sample per poisoned sample
    clean = int((~poisoned & ~cross).sum())
    det = summary.detection
    assert det["n"] == clean + int(poisoned.sum()) and det["positives"] == int(poisoned.sum())
    assert det["false_positive_rate"] == 1.0 and det["flagged"] == clean + int(poisoned.sum())
    assert summary.cross_samples == {"n": int(cross.sum()), "flagged": int(cross.sum()), "flagged_rate": 1.0}


def test_clear_removes_the_abl_isolation_a_forced_run_must_not_reuse(tmp_path):
    folder = RunDir(tmp_path / "run")
    folder.path.mkdir()
    (folder.path / "config.yaml").write_text("{}\n")
    folder.abl_isolated_path.write_text("# 1 of 10 isolated\n3\n")
    np.save(folder.abl_losses_path, np.arange(10.0))
    folder.clear()
    assert not folder.abl_isolated_path.exists() and not folder.abl_losses_path.exists()
    assert folder.abl_isolated_path.name == "abl_isolated.txt"  # the name train.abl resumes from


def test_a_sweep_folder_names_its_parts():
    sweep = SweepDir("/s")
    assert sweep.run_folder("size-3_seed-0") == "runs/size-3_seed-0"
    assert SweepDir.figure_name("clean") == "figure1/clean" and SweepDir.is_figure_run("figure1/trigger")
    assert not SweepDir.is_figure_run("runs/figure1")
    assert sweep.figure_run("trigger").explain_figure_path.as_posix() == "/s/figure1/trigger/explain/figure1.png"
    assert sweep.spec_path.name == "sweep.yaml" and sweep.status_path.name == "sweep_status.json"
