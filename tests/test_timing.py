"""Where a sweep's time went: the timing table read from run folders written by hand, against hand sums."""

import json

import pandas as pd
import pytest

from medbackdoor.defenses.summary import DefenseSummary, write_summary
from medbackdoor.report.timing import time_rows, time_section, time_table, training_seconds


def _manifest(folder, data, epochs):
    folder.mkdir(parents=True, exist_ok=True)
    timings = {"data_seconds": data, "epochs": {str(i + 1): {"seconds": s, "train_seconds": s / 2}
                                                 for i, s in enumerate(epochs)}}
    (folder / "manifest.json").write_text(json.dumps({"status": "complete", "timings": timings}))


def _summary(folder, name, own, child, materials, sharing=None):
    folder.mkdir(parents=True, exist_ok=True)
    timings = {"materials_seconds": materials, "child_seconds": child, "startup_seconds": 0.5,
               "defense_seconds": own, "run_defenses": 2}
    if sharing:
        timings["runs_sharing"] = sharing
    write_summary(folder / "summary.json", DefenseSummary(name=name, method="strip", kind="input", run=str(folder),
                                                          epoch=1, holdout=10, request={}, seconds=child + 99,
                                                          timings=timings))


@pytest.fixture
def runs(tmp_path):
    attack, control = tmp_path / "attack", tmp_path / "control"
    _manifest(attack, 2.0, [10.0, 12.0])  # 24 s
    _manifest(control, 0.0, [20.0])  # 20 s
    # one process (105 s with its materials) ran nc (60 s) and strip (30 s): 15 s of overhead
    _summary(attack / "defenses" / "nc", "nc", 60.0, 100.0, 5.0)
    _summary(attack / "defenses" / "strip", "strip", 30.0, 100.0, 5.0)
    # a second process (8 s) ran spectre (3 s), whose cleanse-and-retrain trained for 50 s
    _summary(attack / "defenses" / "spectre", "spectre", 3.0, 7.0, 1.0)
    _manifest(attack / "defenses" / "spectre" / "retrain", 0.0, [50.0])
    # the clean-model process (40 s) answered for 2 runs: this run's share of nc is 10 s, of the overhead 10 s
    _summary(attack / "defenses" / "nc" / "clean-model", "nc", 20.0, 40.0, 0.0, sharing=2)
    _manifest(control / "defenses" / "random-drop-7" / "retrain", 1.0, [30.0, 31.0])  # 62 s
    (control / "defenses" / "random-drop-7" / "drop.txt").write_text("# 7\n")
    return [attack, control]


def test_training_seconds_adds_data_and_epochs(tmp_path, runs):
    assert training_seconds(runs[0]) == pytest.approx(24.0)
    assert training_seconds(tmp_path / "nothing") is None


def test_every_piece_of_work_is_counted_once(runs):
    rows = time_rows(runs)
    rows = rows[~((rows["step"] == "defense overhead") & (rows["seconds"] == 5.0))]  # the spectre process, below
    got = {(r.step, r.run, r.name): r.seconds for r in rows.itertuples()}
    assert len(got) == len(rows) == 10
    assert got == pytest.approx({
        ("training", "attack", ""): 24.0, ("training", "control", ""): 20.0,
        ("defense", "attack", "nc"): 60.0, ("defense", "attack", "strip"): 30.0, ("defense", "attack", "spectre"): 3.0,
        ("defense overhead", "attack", ""): 15.0,  # 105 - 90
        ("clean-model", "attack", "nc"): 10.0, ("clean-model overhead", "attack", ""): 10.0,
        ("cleanse retrain", "attack", "spectre"): 50.0, ("random-drop retrain", "control", "random-drop-7"): 62.0,
    })
    overhead = sorted(time_rows(runs).query("step == 'defense overhead'")["seconds"])
    assert overhead == pytest.approx([5.0, 15.0])  # 105 - 90, and the spectre process: 8 - 3


def test_the_table_and_the_total(runs):
    rows = time_rows(runs)
    table = time_table(rows)
    training = table[table["step"] == "training"].iloc[0]
    assert (training["count"], training["median_s"], training["min_s"], training["max_s"]) == (2, 22.0, 20.0, 24.0)
    defense = table[table["step"] == "defense"]
    assert list(defense["name"]) == ["nc", "strip", "spectre"]  # most total first
    overhead = table[table["step"] == "defense overhead"].iloc[0]
    assert overhead["count"] == 2 and overhead["total_h"] == pytest.approx(20.0 / 3600)
    total = 24 + 20 + 60 + 30 + 3 + 20 + 10 + 10 + 50 + 62
    assert time_section(rows)[0].startswith(f"{total / 3600:.2f} h of work in all")
    assert list(table["step"].drop_duplicates()) == ["training", "defense", "defense overhead", "clean-model",
                                                      "clean-model overhead", "cleanse retrain",
                                                      "random-drop retrain"]


def test_no_recorded_work_is_an_empty_table(tmp_path):
    (tmp_path / "run").mkdir()
    rows = time_rows([tmp_path / "run"])
    assert rows.empty and time_table(rows).empty and time_section(rows) == []
    assert isinstance(rows, pd.DataFrame)
