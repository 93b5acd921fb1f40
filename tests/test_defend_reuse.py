"""`defend` and the control scorings answer for the checkpoint actually there: extending a run, training it again
(`--force`) or replacing a checkpoint is never answered with an earlier result, and `--force` clears what was
computed from the run."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from medbackdoor.cli.main import main
from medbackdoor.defenses.runner import _materials, defend
from medbackdoor.run import Run
from medbackdoor.study.controls import score_control

TINY = ["dataset.options.n_images=96", "dataset.options.source_size=32", "image_size=32", "train.epochs=1",
        "train.batch_size=16", "eval.epsilons=[0.1]", "trigger.mode=append"]


def _sets(*extra: str) -> list[str]:
    return [a for s in (*TINY, *extra) for a in ("--set", s)]


def _train(folder: Path, *extra: str, flags: tuple[str, ...] = ()) -> None:
    assert main(["run", "--out", str(folder), "--quiet", *flags, *_sets(*extra)]) == 0


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def one_epoch(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDBACKDOOR_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "run"
    _train(folder)
    return folder


def test_defend_after_resume_defends_the_new_last_checkpoint(one_epoch, capsys):
    defend(one_epoch, "label-audit", holdout=8)
    path = one_epoch / "defenses" / "label-audit" / "summary.json"
    assert json.loads(path.read_text())["epoch"] == 1
    _train(one_epoch, "train.epochs=2", flags=("--resume",))
    assert main(["defend", str(one_epoch), "--method", "label-audit", "--holdout", "8"]) == 0
    assert ", epoch 2," in capsys.readouterr().out
    summary = json.loads(path.read_text())
    assert summary["epoch"] == 2
    assert _sha256(one_epoch / "checkpoints" / "epoch_002.pt").startswith(summary["request"]["checkpoint"])
    again = defend(one_epoch, "label-audit", holdout=8)  # the same request now: reused, not recomputed
    assert again.request == summary["request"] and again.seconds == summary["seconds"]
    assert defend(one_epoch, "label-audit", epoch=1, holdout=8).epoch == 1  # an explicit epoch still works


def test_a_changed_default_is_computed_again(one_epoch):
    """The request holds the options as resolved by the code that ran: a summary written under other defaults
    (an older version) does not answer for this one."""
    first = defend(one_epoch, "label-audit", holdout=8)
    assert first.request["resolved"] == first.options
    path = one_epoch / "defenses" / "label-audit" / "summary.json"
    data = json.loads(path.read_text())
    data["request"]["resolved"]["alpha"] = 0.5  # as if an older version's default had been 0.5
    data["seconds"] = -1.0
    path.write_text(json.dumps(data))
    again = defend(one_epoch, "label-audit", holdout=8)
    assert again.seconds >= 0 and again.request == first.request


def test_force_clears_defenses_and_control_scorings(one_epoch):
    defend(one_epoch, "label-audit", holdout=8)
    status = score_control(str(one_epoch), str(one_epoch), threads=1)  # the run as its own control: a scoring
    assert status["status"] == "complete"
    (one_epoch / "control_failed.txt").write_text("an old traceback\n")
    (one_epoch / "defenses" / "strip").mkdir()
    (one_epoch / "defenses" / "strip" / "failed.txt").write_text("an old traceback\n")
    _train(one_epoch, "train.seed=1", flags=("--force",))
    leftovers = {p.name for p in one_epoch.iterdir()} & {"defenses", "control.json", "control_failed.txt"}
    assert leftovers == set()
    summary = defend(one_epoch, "label-audit", holdout=8)
    assert _sha256(one_epoch / "checkpoints" / "epoch_001.pt").startswith(summary.request["checkpoint"])


def test_the_defenders_weights_are_the_checkpoint_on_disk(one_epoch, tmp_path):
    """The materials a defense process gets hold the checkpoint on disk, also after `run --force` (another seed)."""
    old = tmp_path / "old"
    _materials(Run(one_epoch), old, 1, 8, 0, with_test=False)
    _train(one_epoch, "train.seed=1", flags=("--force",))
    new = tmp_path / "new"
    _materials(Run(one_epoch), new, 1, 8, 0, with_test=False)
    saved = torch.load(one_epoch / "checkpoints" / "epoch_001.pt", weights_only=True)["model"]
    before, after = (torch.load(f / "model.pt", weights_only=True) for f in (old, new))
    assert not all(torch.equal(v, saved[k]) for k, v in before.items())  # seed 1 is another model
    assert all(torch.equal(v, saved[k]) for k, v in after.items())


def test_a_retrain_is_of_the_request_that_made_it(one_epoch):
    """A defense recomputed for a new checkpoint leaves no retrain (or drop list) of the old one behind."""
    folder = one_epoch / "defenses" / "label-audit"
    defend(one_epoch, "label-audit", holdout=8)
    (folder / "retrain").mkdir()
    (folder / "retrain_drop.txt").write_text("# stale\n0\n")
    _train(one_epoch, "train.epochs=2", flags=("--resume",))
    defend(one_epoch, "label-audit", holdout=8)
    assert not (folder / "retrain").exists() and not (folder / "retrain_drop.txt").exists()


def test_control_scoring_is_redone_for_a_replaced_checkpoint_of_the_same_size_and_time(tmp_path, monkeypatch):
    """The control's checkpoint is swapped for another model's (the poisoned run's: same architecture, same size),
    with the old modification time restored: the scoring is still redone, as the digest names the file's content."""
    monkeypatch.setenv("MEDBACKDOOR_CACHE", str(tmp_path / "cache"))
    run, control = tmp_path / "run", tmp_path / "control"
    _train(run)
    _train(control, "trigger.fraction=0")
    assert score_control(str(run), str(control), threads=1)["status"] == "complete"
    first = json.loads((run / "control.json").read_text())
    assert score_control(str(run), str(control), threads=1)["status"] == "skipped (complete)"
    ckpt, replacement = control / "checkpoints" / "epoch_001.pt", run / "checkpoints" / "epoch_001.pt"
    st = ckpt.stat()
    if replacement.stat().st_size != st.st_size:
        pytest.skip("the two checkpoints differ in size on this machine")
    shutil.copyfile(replacement, ckpt)
    os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns))
    (control / "predictions" / "epoch_001.npz").unlink()  # its saved clean scores belong to the old model
    assert score_control(str(run), str(control), threads=1)["status"] == "complete"
    second = json.loads((run / "control.json").read_text())
    assert second["control_checkpoint"] != first["control_checkpoint"]
    assert _sha256(ckpt).startswith(second["control_checkpoint"])


def test_a_summary_of_another_revision_is_computed_again(one_epoch, monkeypatch):
    """A defense whose algorithm changed (its ``revision`` raised) does not reuse the summaries of the old one."""
    from medbackdoor.defenses.label_audit import LabelAudit

    first = defend(one_epoch, "label-audit", holdout=8)
    assert first.request["revision"] == LabelAudit.revision
    monkeypatch.setattr(LabelAudit, "revision", LabelAudit.revision + 1)
    again = defend(one_epoch, "label-audit", holdout=8)
    assert again.request["revision"] == first.request["revision"] + 1
    assert again.request != first.request
