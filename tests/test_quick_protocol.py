"""Slow tier: the quick protocol shows the paper's phenomenon on the embedded default (about 10 min on 2 cores).

Run with ``make test-all`` or ``pytest -m slow``.
"""


import pytest

from medbackdoor.config import load_config
from medbackdoor.rundir import RunDir
from medbackdoor.train import run

QUICK = "quick"


@pytest.mark.slow
def test_quick_protocol_shows_the_backdoor(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDBACKDOOR_CACHE", str(tmp_path / "cache"))
    run(load_config(QUICK, ["trigger.fraction=0"]), tmp_path / "clean", progress=False)
    run(load_config(QUICK), tmp_path / "trigger", progress=False)
    clean = RunDir(tmp_path / "clean").extremes()
    trig = RunDir(tmp_path / "trigger").extremes()
    assert 0.70 <= clean["auroc_nn"]["max"] <= 0.95
    assert trig["asr_0.6"]["max"] >= 0.95
    assert trig["auroc_tt"]["max"] >= 0.95
    assert abs(trig["auroc_nn"]["max"] - clean["auroc_nn"]["max"]) <= 0.03
