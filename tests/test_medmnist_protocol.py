"""``reproduce --protocol medmnist``: the grid keeps the datasets whose files are on this machine (and the derived
real-pixel task, always present), names the others, and pairs each dataset's attacks with its own clean control."""

from __future__ import annotations

import numpy as np
import pytest

from medbackdoor.errors import UserError
from medbackdoor.study.sweep import load_sweep


def _file(path, size, channels):
    shape = (size, size) if channels == 1 else (size, size, 3)
    arrays = {}
    for split in ("train", "val", "test"):
        arrays[f"{split}_images"] = np.zeros((4, *shape), np.uint8)
        arrays[f"{split}_labels"] = np.zeros((4, 1), np.uint8)
    np.savez(path, **arrays)


def _datasets(runs):
    return sorted({r.overrides.get("dataset.name") for r in runs})


def test_only_the_present_datasets_and_the_derived_task_run(tmp_path):
    spec, runs = load_sweep("medmnist", overrides=[f"dataset.root={tmp_path}"])
    assert _datasets(runs) == ["nih-sample-single"] and len(runs) == 12  # 3 attacks + control, 3 seeds
    assert "dermamnist" in spec["absent_data"] and "nih-sample-single" not in spec["absent_data"]
    _file(tmp_path / "dermamnist_64.npz", 64, 3)
    _file(tmp_path / "pneumoniamnist.npz", 28, 1)  # 28 px: not the size the grid asks for
    spec, runs = load_sweep("medmnist", overrides=[f"dataset.root={tmp_path}"])
    assert _datasets(runs) == ["dermamnist", "nih-sample-single"] and len(runs) == 24
    assert "pneumoniamnist" in spec["absent_data"]
    derma = [r for r in runs if r.overrides["dataset.name"] == "dermamnist"]
    assert {r.overrides["trigger.target"] for r in derma} == {"melanocytic nevi"}
    assert sum(r.overrides.get("trigger.fraction") == 0.0 for r in derma) == 3  # its own clean controls


def test_a_sweep_with_no_dataset_present_is_one_line(tmp_path):
    sweep = tmp_path / "only-derma.yaml"
    sweep.write_text("name: only-derma\nbase_config: quick-real\npresent_data: true\n"
                     "grid:\n  - dataset.name: [dermamnist]\n    trigger.target: [melanoma]\n")
    with pytest.raises(UserError, match="none of the datasets"):
        load_sweep(sweep, overrides=[f"dataset.root={tmp_path}"])


def test_an_option_one_dataset_of_the_grid_lacks_is_one_line(tmp_path):
    """``--set dataset.options.size=28`` reaches every block; nih-sample-single has no size: refused up front."""
    with pytest.raises(UserError, match="nih-sample-single .* has no option 'size'"):
        load_sweep("medmnist", overrides=[f"dataset.root={tmp_path}", "dataset.options.size=28"])


def test_only_keeps_the_runs_with_every_setting_given(tmp_path):
    """``--only dataset.name=dermamnist``: one dataset of the study, its attacks and its own clean controls."""
    _file(tmp_path / "dermamnist_64.npz", 64, 3)
    root = [f"dataset.root={tmp_path}"]
    _, runs = load_sweep("medmnist", overrides=root, only=["dataset.name=dermamnist"])
    assert _datasets(runs) == ["dermamnist"] and len(runs) == 12
    assert sum(r.overrides.get("trigger.fraction") == 0.0 for r in runs) == 3
    _, runs = load_sweep("medmnist", overrides=root, only=["dataset.name=dermamnist", "train.seed=1"])
    assert len(runs) == 4 and {r.overrides["train.seed"] for r in runs} == {1}
    _, runs = load_sweep("medmnist", overrides=root, only=["trigger.fraction=0.0"])
    assert len(runs) == 6 and _datasets(runs) == ["dermamnist", "nih-sample-single"]
    with pytest.raises(UserError, match="--only dataset.nam: not a run setting"):
        load_sweep("medmnist", overrides=root, only=["dataset.nam=dermamnist"])
    with pytest.raises(UserError, match="no run of the sweep has dataset.name=chexpert"):
        load_sweep("medmnist", overrides=root, only=["dataset.name=chexpert"])
    with pytest.raises(UserError, match="none of the datasets of medmnist.yaml is on this machine .pathmnist"):
        load_sweep("medmnist", overrides=root, only=["dataset.name=pathmnist"])
