"""Registry conformance: every registered defense goes through ``defend`` on a real (tiny) run and answers with its
kind's contract. The methods come from the registry, not from a list here, so a new defense is tested by being
registered. Only options that make a method quick at this size are set here (fewer steps, fewer epochs); a method
not named below runs at its defaults."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import image_cache_at

from medbackdoor.config import load_config
from medbackdoor.defenses import DEFENSES
from medbackdoor.defenses.base import KINDS
from medbackdoor.defenses.runner import defend
from medbackdoor.train import run

TINY = ["dataset.options.n_images=120", "dataset.options.source_size=32", "image_size=32", "train.epochs=3",
        "train.batch_size=16", "eval.epsilons=[0.1]", "trigger.mode=append", "trigger.fraction=0.2"]
# speed only: fewer optimisation steps or epochs than the defaults (a 2-core CPU, seconds a method)
QUICK = {
    "anp": {"steps": 5, "levels": 5},
    "i-bau": {"rounds": 1},
    "ft-sam": {"epochs": 1},
    "abl": {"unlearn_epochs": 1},
    "neural-cleanse": {"images": 8, "steps": 3, "batch_size": 8},
    "fine-pruning": {"epochs": 1},
}
HOLDOUT = 40


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("conformance")
    with image_cache_at(folder / "cache"):
        run(load_config(overrides=TINY), folder / "run", progress=False)
        yield folder / "run"


def _finite_or_none(value) -> bool:
    return value is None or (isinstance(value, int | float) and np.isfinite(value))


@pytest.mark.parametrize("method", DEFENSES.names())
def test_every_defense_answers_its_kinds_contract(tiny_run, method):
    cls = DEFENSES.get(method)
    assert cls.kind in KINDS and cls.paper and cls.changes  # what it follows and what was changed, for the docs
    with image_cache_at(tiny_run.parent / "cache"):
        summary = defend(tiny_run, method, holdout=HOLDOUT, options=QUICK.get(method, {}))
    written = json.loads((tiny_run / "defenses" / method / "summary.json").read_text())
    assert written["method"] == method and written["kind"] == cls.kind
    assert json.dumps(summary.options)  # the options it ran with are plain JSON
    manifest = json.loads((tiny_run / "manifest.json").read_text())
    if cls.kind in ("data", "input"):
        detection = written["detection"]
        assert 0 <= detection["auroc"] <= 1
    if cls.kind == "data":
        assert all(0 <= p < manifest["dataset"]["train_samples"] for p in written["flagged_positions"])
    if cls.kind == "input":
        assert np.isfinite(written["threshold"]) and 0 < written["calibration_images"] <= HOLDOUT
    if cls.kind == "model":
        assert isinstance(written["backdoored_verdict"], bool)
    if cls.kind == "mitigation":
        assert written["before"].keys() == written["after"].keys() and written["after"]
        assert all(_finite_or_none(v) for v in written["after"].values())
    # the same request is answered from disk
    mtime = (tiny_run / "defenses" / method / "summary.json").stat().st_mtime_ns
    with image_cache_at(tiny_run.parent / "cache"):
        defend(tiny_run, method, holdout=HOLDOUT, options=QUICK.get(method, {}))
    assert (tiny_run / "defenses" / method / "summary.json").stat().st_mtime_ns == mtime
