"""Sweep executors: the local pool survives a dying or stalled worker; Ray is optional and runs the same sweep,
with the same threads, to the same numbers (slow tier)."""

import json
import os
import sys
import time
from pathlib import Path

import pytest
import yaml

from medbackdoor.cli import main
from medbackdoor.errors import UserError
from medbackdoor.rundir import RunDir
from medbackdoor.study import sweep
from medbackdoor.study.executors import RAY_HINT, LocalExecutor, create_executor
from medbackdoor.study.sweep import run_state, run_sweep
from medbackdoor.train.loop import Heartbeat


def _square(x, threads):
    return {"value": x * x, "threads": threads}


def _die_on_two(x, threads):
    if x == 2:
        os._exit(3)  # the worker process dies without answering
    return {"status": "complete", "value": x}


@pytest.mark.slow
def test_local_executor_maps_every_task_with_its_threads():
    ex = LocalExecutor(jobs=2)
    got = dict(ex.map(_square, [(1,), (2,), (3,)]))
    assert {i: r["value"] for i, r in got.items()} == {0: 1, 1: 4, 2: 9}
    assert all(r["threads"] == max(1, (os.cpu_count() or 1) // 2) for r in got.values())


@pytest.mark.slow
def test_local_executor_reports_a_dead_worker_as_failed():
    got = dict(LocalExecutor(jobs=1).map(_die_on_two, [(1,), (2,), (3,)]))
    assert got[0]["value"] == 1 and got[2]["value"] == 3  # one process per task: a death touches no other task
    assert got[1]["status"] == "failed" and "worker died" in got[1]["error"] and "code 3" in got[1]["error"]
    assert "traceback" in got[1]


def _beats(heartbeat, beats, every, threads):
    """A fake run: touches its heartbeat ``beats`` times, ``every`` seconds apart, then returns."""
    for _ in range(beats):
        time.sleep(every)
        Path(heartbeat).touch()
    return {"status": "complete", "pid": os.getpid()}


def _stalls(heartbeat, threads):
    """A fake run that beats once and then hangs (as a starved or deadlocked worker does)."""
    Path(heartbeat).touch()
    Path(heartbeat).with_suffix(".pid").write_text(str(os.getpid()))
    time.sleep(600)
    return {"status": "complete"}


def _fake_task(kind, heartbeat, threads):
    return _stalls(heartbeat, threads) if kind == "stall" else _beats(heartbeat, 6, 0.5, threads)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]


@pytest.mark.slow
def test_local_executor_stops_a_stalled_task_and_the_others_go_on(tmp_path):
    """A task whose heartbeat stops is killed after the timeout and failed with the reason; a task that runs longer
    than the timeout but keeps beating is not; the third task still runs (jobs=2: two at a time)."""
    beats = [str(tmp_path / f"t{i}" / "heartbeat") for i in range(3)]
    tasks = [("stall", beats[0]), ("beat", beats[1]), ("beat", beats[2])]
    start = time.monotonic()
    got = dict(LocalExecutor(jobs=2, stall_timeout=1.5).map(_fake_task, tasks, beats))
    assert time.monotonic() - start < 60  # not the stalled task's 600 s
    assert got[0]["status"] == "failed" and got[0]["error"].startswith("no progress for 1.5 s")
    assert "traceback" in got[0]  # the sweep records it in the run's manifest
    assert got[1]["status"] == got[2]["status"] == "complete"  # each ran 3 s > 1.5 s, beating every 0.5 s
    assert not _alive(int(Path(beats[0]).with_suffix(".pid").read_text()))


def test_stall_timeout_zero_is_off_and_a_negative_one_is_one_line():
    assert LocalExecutor(stall_timeout=0).stall_timeout == 0
    with pytest.raises(UserError, match="--stall-timeout"):
        create_executor("local", stall_timeout=-1)


def test_heartbeat_touches_at_most_every_interval(tmp_path):
    path = tmp_path / "heartbeat"
    path.touch()
    os.utime(path, (0, 0))
    beat = Heartbeat(path, every=3600)
    beat()
    assert path.stat().st_mtime > 0  # the first batch touches
    os.utime(path, (0, 0))
    for _ in range(50):
        beat()
    assert path.stat().st_mtime == 0  # then not again within the hour
    Heartbeat(None)()  # no path: nothing


def _stall_or_beat(data, folder, threads):
    """In place of the sweep's worker: the run fraction-0.4 beats once and hangs, the others beat and finish."""
    heartbeat = RunDir(folder).heartbeat_path
    if Path(folder).name.startswith("fraction-0.4"):
        return _stalls(heartbeat, threads)
    return {**_beats(heartbeat, 2, 0.1, threads), "error": None, "seconds": 0.2}


class StallOne(LocalExecutor):
    def map(self, fn, tasks, heartbeats=None):
        assert fn is sweep._run_one or not tasks  # the runs; then controls and defenses (none here)
        return super().map(_stall_or_beat, tasks, heartbeats)


def test_sweep_records_a_stalled_run_as_failed_and_finishes_the_others(tmp_path):
    spec = tmp_path / "sweep.yaml"
    grid = [{"trigger.fraction": [0.0, 0.4], "train.seed": [0]}]
    spec.write_text(yaml.safe_dump({"name": "tiny", "base": TINY, "grid": grid, "controls": False}, sort_keys=False))
    results = run_sweep(spec, tmp_path / "o", progress=False, executor=StallOne(jobs=2, stall_timeout=2))
    assert {r["name"]: r["status"] for r in results} == {"fraction-0.0_seed-0": "complete",
                                                         "fraction-0.4_seed-0": "failed"}
    stalled = tmp_path / "o" / "runs" / "fraction-0.4_seed-0"
    assert run_state(stalled) == "failed: no progress for 2 s (stopped by --stall-timeout)"
    assert RunDir(stalled).exists()  # its config is written beside the manifest, as for a worker that died


def test_training_and_scoring_touch_the_heartbeat(tmp_path, monkeypatch):
    """A real tiny run beats at least once per training batch (Heartbeat spied with no interval)."""
    from medbackdoor.config import config_from_data
    from medbackdoor.train import runner

    calls = []

    class Every(Heartbeat):
        def __call__(self):
            calls.append(self.path)
            self.last = -1e9  # no interval: every batch touches
            super().__call__()
    monkeypatch.setattr(runner, "Heartbeat", Every)
    config = config_from_data({**TINY, "cache_dir": str(tmp_path / "cache")})
    run = RunDir(tmp_path / "run")
    runner.run(config, run.path, progress=False)
    n_train = json.loads(run.manifest_path.read_text())["dataset"]["train_samples"]
    assert len(calls) >= n_train // TINY["train"]["batch_size"] and set(calls) == {run.heartbeat_path}
    assert run.heartbeat_path.stat().st_mtime >= run.config_path.stat().st_mtime


def _threads(threads):
    import torch

    torch.set_num_threads(threads)
    return torch.get_num_threads()


def test_a_local_run_gets_this_machines_cpus_by_default():
    assert dict(LocalExecutor(jobs=1).map(_threads, [()])) == {0: os.cpu_count() or 1}


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the Ray tests (its start takes seconds); executors made meanwhile join it."""
    pytest.importorskip("ray")
    saved = os.environ.get("PYTHONPATH")
    # Ray's workers import this module's task functions: put tests/ on their path (they inherit this environment)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(__file__).parent), saved) if p)
    ex = create_executor("ray")
    yield ex
    ex.close()
    if saved is None:
        os.environ.pop("PYTHONPATH")
    else:
        os.environ["PYTHONPATH"] = saved


@pytest.mark.slow
def test_ray_default_threads_equal_the_local_default(local_ray):
    local = dict(LocalExecutor(jobs=1).map(_threads, [()]))
    ray = dict(local_ray.map(_threads, [()]))
    assert ray == local == {0: os.cpu_count() or 1}


@pytest.mark.slow
def test_ray_stops_a_stalled_task(tmp_path, local_ray):
    beats = [str(tmp_path / f"t{i}" / "heartbeat") for i in range(2)]
    ex = create_executor("ray", stall_timeout=3)
    got = dict(ex.map(_fake_task, [("stall", beats[0]), ("beat", beats[1])], beats))
    assert got[0]["status"] == "failed" and got[0]["error"].startswith("no progress for 3 s")
    assert got[1]["status"] == "complete"


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
def test_ray_sweep_equals_local_sweep(tmp_path, local_ray):
    """With the defaults of both, a local Ray runs the same tiny sweep (with a failing point) to the same folders
    and metrics as --jobs 1."""
    spec = tmp_path / "sweep.yaml"
    base = {**TINY, "cache_dir": str(tmp_path / "cache")}
    grid = [{"trigger.fraction": [0.0, 0.4], "train.seed": [0]}, {"trigger.size": [40], "train.seed": [0]}]
    spec.write_text(yaml.safe_dump({"name": "tiny", "base": base, "grid": grid}, sort_keys=False))
    local = run_sweep(spec, tmp_path / "local", jobs=1, progress=False)
    ray = run_sweep(spec, tmp_path / "ray", progress=False, executor=local_ray)
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


def test_a_defense_task_splits_its_seconds_by_each_defenses_own_time():
    from types import SimpleNamespace

    answers = [SimpleNamespace(timings={"defense_seconds": 10.0}), SimpleNamespace(timings={"defense_seconds": 30.0}),
               ValueError("did not apply")]
    # 70 s in all: 40 s are the two defenses' own, the other 30 s (loading, the process) are shared by 3
    assert sweep._seconds_each(70.0, answers) == pytest.approx([20.0, 40.0, 10.0])
    # summaries reused from an earlier call record more than this call took: an equal share each
    assert sweep._seconds_each(6.0, answers) == pytest.approx([2.0, 2.0, 2.0])
