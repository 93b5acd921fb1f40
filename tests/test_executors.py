"""Sweep executors: the local pool survives a dying worker; Ray is optional and runs the same sweep (slow tier)."""

import json
import os
import sys

import pytest
import yaml

from medbackdoor.cli import main
from medbackdoor.errors import UserError
from medbackdoor.study.executors import RAY_HINT, LocalExecutor, create_executor
from medbackdoor.study.sweep import run_sweep


def _square(x, threads):
    return {"value": x * x, "threads": threads}


def _die_on_two(x, threads):
    if x == 2:
        os._exit(3)  # the worker process dies without answering
    return {"status": "complete", "value": x}


def test_local_executor_maps_every_task_with_its_threads():
    ex = LocalExecutor(jobs=2)
    got = dict(ex.map(_square, [(1,), (2,), (3,)]))
    assert {i: r["value"] for i, r in got.items()} == {0: 1, 1: 4, 2: 9}
    assert all(r["threads"] == max(1, (os.cpu_count() or 1) // 2) for r in got.values())


def test_local_executor_reports_a_dead_worker_as_failed():
    got = dict(LocalExecutor(jobs=1).map(_die_on_two, [(1,), (2,)]))
    assert got[0]["value"] == 1 or got[0]["status"] == "failed"  # a pool broken by task 1 may fail task 0 too
    assert got[1]["status"] == "failed" and "worker died" in got[1]["error"]
    assert "traceback" in got[1]


def test_executor_options_are_checked():
    with pytest.raises(UserError, match="--jobs"):
        create_executor("local", jobs=0)
    with pytest.raises(UserError, match="need --executor ray"):
        create_executor("local", gpus_per_run=1)


def test_ray_missing_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    with pytest.raises(UserError) as err:
        create_executor("ray")
    assert str(err.value) == RAY_HINT
    assert main(["sweep", "quick", "--out", str(tmp_path / "o"), "--executor", "ray"]) == 2
    assert "pip install 'medbackdoor[ray]'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


TINY = {"dataset": {"options": {"n_images": 48, "source_size": 32}}, "image_size": 32,
        "train": {"epochs": 1, "batch_size": 16}, "eval": {"epsilons": [0.5]}}


def _without_timings(text: str) -> list[list[str]]:
    """metrics.csv rows without the wall-clock columns (seconds, images per second)."""
    rows = [line.split(",") for line in text.splitlines()]
    timing = {i for i, c in enumerate(rows[0]) if c == "seconds" or c.endswith("_per_s")}
    return [[c for i, c in enumerate(row) if i not in timing] for row in rows]


@pytest.mark.slow
def test_ray_sweep_equals_local_sweep(tmp_path):
    """A local Ray runs the same tiny sweep (with a failing point) to the same folders and metrics as --jobs 1."""
    pytest.importorskip("ray")
    spec = tmp_path / "sweep.yaml"
    base = {**TINY, "cache_dir": str(tmp_path / "cache")}
    grid = [{"trigger.fraction": [0.0, 0.4], "train.seed": [0]}, {"trigger.size": [40], "train.seed": [0]}]
    spec.write_text(yaml.safe_dump({"name": "tiny", "base": base, "grid": grid}, sort_keys=False))
    threads = os.cpu_count() or 1
    local = run_sweep(spec, tmp_path / "local", jobs=1, progress=False)
    ex = create_executor("ray", cpus_per_run=threads)
    try:
        ray = run_sweep(spec, tmp_path / "ray", progress=False, executor=ex)
    finally:
        ex.close()
    assert [(r["name"], r["status"]) for r in ray] == [(r["name"], r["status"]) for r in local]
    assert sum(r["status"] == "failed" for r in ray) == 1
    for r in local:
        if r["status"] != "complete" or ":" in r["name"]:
            continue
        name = r["name"]
        a = (tmp_path / "local" / "runs" / name / "metrics.csv").read_text()
        b = (tmp_path / "ray" / "runs" / name / "metrics.csv").read_text()
        assert _without_timings(a) == _without_timings(b)
    a, b = (json.loads((tmp_path / x / "runs" / "fraction-0.4_seed-0" / "control.json").read_text())
            for x in ("local", "ray"))
    assert a["asr"] == b["asr"] and a["control"] == b["control"] == "fraction-0.0_seed-0"
    status = json.loads((tmp_path / "ray" / "sweep_status.json").read_text())
    assert len(status) == 4  # two runs, the failed one, and the poisoned run scored on its clean control
