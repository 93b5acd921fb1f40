"""The manifest record: one writer (``RunDir.write_manifest``), one reader (``RunDir.manifest``)."""

import json

import pytest

from medbackdoor.errors import UserError
from medbackdoor.manifest import Manifest
from medbackdoor.rundir import RunDir


def test_no_manifest_reads_as_new(tmp_path):
    m = RunDir(tmp_path / "run").manifest()
    assert m.status == "new" and not m.exists and m.epochs_done == 0 and m.labels is None
    assert RunDir(tmp_path / "run").status() == "new"


def test_round_trip_keeps_unknown_keys_and_leaves_unset_optionals_out(tmp_path):
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    written = {"status": "complete", "epochs_done": 3, "dataset": {"train": 10}, "labels": ["A", "B"],
               "from_a_later_version": {"x": 1}}
    run.manifest_path.write_text(json.dumps(written))
    m = run.manifest()
    assert (m.status, m.epochs_done, m.dataset, m.labels) == ("complete", 3, {"train": 10}, ["A", "B"])
    assert m.extra == {"from_a_later_version": {"x": 1}}
    assert run.label_names() == ("A", "B")
    m.fail("RuntimeError: boom", "Traceback ...")
    run.write_manifest(m)
    back = json.loads(run.manifest_path.read_text())
    assert back["from_a_later_version"] == {"x": 1} and back["status"] == "failed"
    assert back["error"] == "RuntimeError: boom" and back["traceback"] == "Traceback ..."
    assert "pretrained" not in back and "extra" not in back  # unset optionals and the container are not written


def test_a_status_outside_the_known_ones_is_refused(tmp_path):
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.manifest_path.write_text(json.dumps({"status": "done"}))
    with pytest.raises(UserError, match="manifest status 'done'"):
        run.manifest()


def test_the_record_names_every_key_the_runner_writes(tmp_path, monkeypatch):
    """A run's manifest has no key outside the record's fields (nothing written around the type)."""
    from medbackdoor.config import load_config
    from medbackdoor.train.runner import run

    monkeypatch.setenv("MEDBACKDOOR_CACHE", str(tmp_path / "cache"))
    config = load_config(overrides=["dataset.name=synthetic", "dataset.options.n_images=48", "image_size=32",
                                    "train.epochs=1", "train.batch_size=16", "eval.epsilons=[0.5]"])
    returned = run(config, tmp_path / "r", progress=False)
    saved = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert returned.extra == {} and RunDir(tmp_path / "r").manifest() == returned
    assert set(saved) <= set(Manifest.__dataclass_fields__) - {"extra"}
    assert saved["status"] == "complete" and saved["epochs_done"] == 1
    assert saved["timings"]["epochs"]["1"]["seconds"] > 0
