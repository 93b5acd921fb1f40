"""``medbackdoor sweep``: one run folder per grid point, run independently, restartable.

A sweep file has ``base_config`` (a run config file, relative to the sweep file, or a built-in name), ``base``
(overrides, a nested mapping) and ``grid``: dotted keys mapped to lists (their cartesian product), or a list of
such mappings (the union of their products; e.g. trigger sizes × seeds, plus the clean control × seeds).
Completed runs are skipped, unfinished ones resumed, and a failed run is recorded in its manifest while the
sweep goes on.
"""

from __future__ import annotations

import itertools
import json
import re
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import yaml

from medbackdoor._io import write_json, write_text
from medbackdoor.config import config_from_data, read_yaml, resolve_builtin, resolve_config_path, set_dotted
from medbackdoor.errors import UserError
from medbackdoor.rundir import RunDir, SweepDir
from medbackdoor.study.executors import Executor, LocalExecutor

BUILTIN_SWEEPS = Path(__file__).resolve().parents[1] / "configs" / "sweeps"
SWEEP_KEYS = {"name", "description", "base_config", "base", "grid", "cuts", "figure1", "defenses", "controls",
              "clean_model", "present_data"}
DEFENSE_KEYS = {"method", "name", "options", "holdout", "epoch", "retrain", "where"}


@dataclass
class SweepRun:
    name: str
    overrides: dict  # dotted key -> value
    data: dict  # the full nested run config
    folder: str = ""  # relative to the sweep's --out; default runs/<name>

    def __post_init__(self) -> None:
        self.folder = self.folder or SweepDir("").run_folder(self.name)


def load_sweep(path: str | Path, seeds: list[int] | None = None, overrides: list[str] | tuple[str, ...] = (),
               defenses: list | None = None, only: list[str] | tuple[str, ...] = ()) -> tuple[dict, list[SweepRun]]:
    """Read a sweep file (or built-in sweep name) and expand it.

    Args:
        path: the sweep YAML, or ``quick`` / ``paper``.
        seeds: replaces every ``train.seed`` list of the grid.
        overrides: ``dotted.key=value`` applied to the base of every run.
        defenses: entries appended to the sweep's ``defenses`` list.
        only: ``dotted.key=value`` filters: the runs whose setting equals every value are kept (see
            :func:`select_runs`).
    """
    path = resolve_sweep_path(path)
    spec = read_yaml(path)
    if defenses:
        spec = {**spec, "defenses": [*(spec.get("defenses") or []), *defenses]}
    unknown = sorted(set(spec) - SWEEP_KEYS)
    if unknown:
        raise UserError(f"unknown sweep key {unknown[0]} in {path}")
    for key, default in (("controls", True), ("clean_model", False), ("present_data", False)):
        if not isinstance(spec.get(key, default), bool):
            raise UserError(f"sweep key {key} must be true or false, got {spec[key]!r} in {path}")
    base = _base(spec, path, overrides)
    runs = [SweepRun(run_name(point), point, _apply(base, point)) for point in expand_grid(spec.get("grid"), seeds)]
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise UserError("the grid lists the same run twice")
    runs += figure_runs(spec, base)
    if only:
        runs = select_runs(runs, only)
    if spec.get("present_data"):
        runs, spec["absent_data"] = _present_only(runs)
        if not runs:
            raise UserError(f"none of the datasets of {path.name} is on this machine ({', '.join(spec['absent_data'])}"
                            "): put their files under dataset.root (see docs/data.md)")
    for r in runs:
        config_from_data(r.data)  # validate every point before running any
    entries = defense_entries(spec, path.parent)  # and every defense
    for e in entries:  # a `where` key must name a setting of the runs' config
        for key in e.get("where", {}):
            if runs and _lookup(config_from_data(runs[0].data).to_dict(), key) is _MISSING:
                raise UserError(f"defenses entry {e['name']}: where key {key} is not a run setting")
    return spec, runs


def select_runs(runs: list[SweepRun], only: list[str] | tuple[str, ...]) -> list[SweepRun]:
    """The runs whose config has every ``dotted.key=value`` of ``only`` (values read as YAML, as ``--set`` reads
    them; a scalar matches by equality, with numbers compared as numbers and text case-sensitively).

    Raises:
        UserError: a key that is not a run setting, or no run left (one line).
    """
    from medbackdoor.config import parse_assignment

    wanted = [parse_assignment(text, "--only") for text in only]
    kept = []
    for r in runs:
        config = config_from_data(r.data).to_dict()
        values = [_lookup(config, key) for key, _ in wanted]
        for (key, _), value in zip(wanted, values):
            if value is _MISSING:
                raise UserError(f"--only {key}: not a run setting")
        if all(value == want for (_, want), value in zip(wanted, values)):
            kept.append(r)
    if not kept:
        raise UserError(f"no run of the sweep has {' and '.join(only)}")
    return kept


def _present_only(runs: list[SweepRun]) -> tuple[list[SweepRun], list[str]]:
    """The runs whose dataset is on this machine (:meth:`~medbackdoor.data.base.ChestXrayDataset.present`), and
    the names of the datasets left out."""
    from medbackdoor.data import DATASETS

    kept, absent = [], []
    for r in runs:
        d = config_from_data(r.data).dataset
        # a bad option is one line now, not a failed run later
        DATASETS.check_options(d.name, dict(d.options), f"dataset {d.name} (run {r.name})")
        options = {k: v for k, v in d.options.items() if k != "root"}
        if DATASETS.get(d.name).present(root=d.root, **options):
            kept.append(r)
        elif d.name not in absent:
            absent.append(d.name)
    return kept, absent


def _plugin_path(method: str, folder: Path | None) -> str:
    """A ``file.py:Name`` method with its file made absolute: beside the sweep file when it is there, else from the
    working directory."""
    from medbackdoor._registry import is_plugin_spec, plugin_spec

    target, _, attr = method.rpartition(":")
    if is_plugin_spec(method) and target.endswith(".py") and folder is not None and (folder / target).is_file():
        return f"{(folder / target).resolve()}:{attr}"
    return plugin_spec(method)


def defense_entries(spec: dict, folder: Path | None = None) -> list[dict]:
    """The sweep's ``defenses`` list, each entry as ``{method, name, options, holdout, epoch, retrain}``.

    An entry is a method (a registered name or a plugin spec, ``package.module:Name`` or ``path/to/file.py:Name``;
    a relative file is read from the sweep file's folder, then the working directory), or a mapping with
    ``method`` and optionally ``name`` (the folder under ``RUN/defenses/``, needed when one method appears twice;
    default the method, or a plugin's object name), ``options``, ``holdout``, ``epoch`` and ``retrain`` (data
    defenses: cleanse and retrain) and ``where`` (the runs it applies to: dotted run settings, each with a list of
    values, as a grid block; absent: every run). Checked here, before anything runs (a plugin in a process of its
    own: it is never imported where a run's truth is held).
    """
    from medbackdoor.defenses.isolation import describe_all
    from medbackdoor.defenses.runner import default_name

    entries = []
    for raw in spec.get("defenses") or []:
        entry = {"method": raw} if isinstance(raw, str) else dict(raw or {})
        unknown = sorted(set(entry) - DEFENSE_KEYS)
        if unknown or "method" not in entry:
            raise UserError(f"bad defenses entry {raw!r}: needs method, may have {', '.join(sorted(DEFENSE_KEYS))}")
        entry["method"] = _plugin_path(str(entry["method"]), folder)
        entry.setdefault("name", default_name(entry["method"]))
        entry.setdefault("options", {})
        entries.append(entry)
    described = describe_all([(e["method"], e["options"]) for e in entries])
    for entry, defense in zip(entries, described):
        if entry.get("retrain") and defense.kind != "data":
            raise UserError(f"defenses entry {entry['name']}: retrain needs a data defense")
        where = entry.get("where", {})
        if not isinstance(where, dict) or not all(isinstance(v, list) and v for v in where.values()):
            raise UserError(f"defenses entry {entry['name']}: where must map dotted run settings to non-empty "
                            f"lists of values, got {where!r}")
    names = [e["name"] for e in entries]
    if len(set(names)) != len(names):
        raise UserError("the sweep lists two defenses with the same name; give each a name")
    return entries


_MISSING = object()


def _lookup(data: dict, key: str):
    """The value at dotted ``key`` of a nested config dict, or ``_MISSING``."""
    for part in key.split("."):
        if not isinstance(data, dict) or part not in data:
            return _MISSING
        data = data[part]
    return data


def applies(entry: dict, config: dict) -> bool:
    """Whether a defenses entry's ``where`` selects a run of this (full, nested) config."""
    return all(_lookup(config, key) in values for key, values in entry.get("where", {}).items())


def _base(spec: dict, path: Path, overrides) -> dict:
    """The nested config every point starts from: ``base_config`` ← ``base`` ← ``--set`` overrides."""
    base: dict = {}
    if spec.get("base_config"):
        ref = spec["base_config"]
        local = path.parent / str(ref)
        base = read_yaml(local if local.is_file() else resolve_config_path(ref))
    _merge(base, spec.get("base") or {})
    for assignment in overrides:
        set_dotted(base, assignment)
    return base


def figure_runs(spec: dict, base: dict) -> list[SweepRun]:
    """The pair a sweep trains for Figure 1 alone (its ``figure1`` overrides: e.g. a resolution whose last layer
    is at least 4×4): the trigger run and its clean control, seed 0, in ``figure1/trigger`` and ``figure1/clean``.

    They are not points of the grid: tables and figures of the report never include them.
    """
    extra = spec.get("figure1")
    if not extra:
        return []
    if not isinstance(extra, dict):
        raise UserError(f"sweep key figure1 must map dotted keys to values, got {extra!r}")
    points = {"trigger": {**extra, "train.seed": 0}, "clean": {**extra, "train.seed": 0, "trigger.fraction": 0.0}}
    return [SweepRun(SweepDir.figure_name(name), point, _apply(base, point), folder=SweepDir.figure_name(name))
            for name, point in points.items()]


def builtin_sweeps() -> list[str]:
    """Names of the sweeps shipped in the package (``quick``, ``paper``, ...)."""
    return sorted(p.stem for p in BUILTIN_SWEEPS.glob("*.yaml"))


def resolve_sweep_path(path: str | Path) -> Path:
    """A sweep file, or the file of a built-in sweep name; a clear error naming both when neither exists."""
    return resolve_builtin(path, BUILTIN_SWEEPS, "sweep")


def expand_grid(grid, seeds: list[int] | None = None) -> list[dict]:
    """Grid points as dicts of dotted key → value, in file order, without duplicates."""
    blocks = grid if isinstance(grid, list) else [grid or {}]
    points, seen = [], set()
    for block in blocks:
        if not isinstance(block, dict):
            raise UserError(f"a grid block must map dotted keys to lists, got {block!r}")
        block = dict(block)
        if seeds is not None and "train.seed" in block:
            block["train.seed"] = list(seeds)
        for key, values in block.items():
            if not isinstance(values, list) or not values:
                raise UserError(f"grid key {key} must map to a non-empty list, got {values!r}")
        for combo in itertools.product(*block.values()):
            point = dict(zip(block, combo))
            key = json.dumps(point, sort_keys=True, default=str)
            if key not in seen:
                seen.add(key)
                points.append(point)
    return points


def run_name(point: dict) -> str:
    """A readable folder name: ``size-3_seed-0``; the full dotted key where last parts would clash."""
    if not point:
        return "base"
    last = [k.split(".")[-1] for k in point]
    parts = [f"{k.replace('.', '-') if last.count(k.split('.')[-1]) > 1 else k.split('.')[-1]}-{v}"
             for k, v in point.items()]
    return re.sub(r"[^A-Za-z0-9._-]+", "-", "_".join(parts))


def _merge(into: dict, extra: dict) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def _apply(base: dict, point: dict) -> dict:
    data = json.loads(json.dumps(base))
    for key, value in point.items():
        set_dotted(data, f"{key}={json.dumps(value)}")
    return data


def run_state(folder: Path) -> str:
    """``new``, ``complete``, ``failed: ...`` or ``partial (k epochs)``, read from the run folder."""
    manifest = RunDir(folder).manifest()
    if not manifest.exists:
        return "new"
    if manifest.status == "complete":
        return "complete"
    if manifest.status == "failed":
        return f"failed: {manifest.error or '?'}"
    return f"partial ({manifest.epochs_done} epochs)"


def run_sweep(path: str | Path, out: str | Path, jobs: int = 1, dry_run: bool = False,
              seeds: list[int] | None = None, progress: bool = True, overrides: list[str] | tuple[str, ...] = (),
              executor: Executor | None = None, defenses: list | None = None,
              only: list[str] | tuple[str, ...] = ()) -> list[dict]:
    """Run every grid point into ``out/runs/<name>`` (and a ``figure1`` pair into ``out/figure1/``); returns one
    status dict per run, with its ``folder``.

    ``defenses``: entries added to the sweep's ``defenses`` list (a user's own defense beside the built-ins).
    ``only``: run the part of the grid whose settings match (:func:`select_runs`). With sweep key
    ``clean_model: true``, every input defense and repair also runs on each poisoned run's clean
    control model (:func:`run_clean_model_defenses`).

    ``executor`` runs the tasks (default: a local pool of ``jobs`` processes; see
    :mod:`medbackdoor.study.executors` for Ray); whichever runs them, the folders and results are the same.
    """
    out = Path(out)
    spec, runs = load_sweep(path, seeds, overrides, defenses, only)
    if dry_run:
        return [{"name": r.name, "state": run_state(out / r.folder), "overrides": r.overrides} for r in runs]
    own = executor is None
    executor = executor or LocalExecutor(jobs)
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_text(SweepDir(out).spec_path, yaml.safe_dump({**spec, "runs": [r.name for r in runs]}, sort_keys=False))
        results = []
        tasks = [(r.data, str(out / r.folder)) for r in runs]
        heartbeats = [RunDir(out / r.folder).heartbeat_path for r in runs]  # a run that stops beating is stopped
        for done, (i, status) in enumerate(executor.map(_run_one, tasks, heartbeats), 1):
            r = runs[i]
            result = {"name": r.name, "folder": str(out / r.folder), **_settle(status, out / r.folder, r.data)}
            results.append(result)
            if progress:
                print(f"[{done}/{len(runs)}] {r.name}: {result['status']} ({result['seconds']:.0f} s)"
                      + (f" - {result['error']}" if result.get("error") else ""), flush=True)
        order = {r.name: i for i, r in enumerate(runs)}
        results.sort(key=lambda x: order[x["name"]])
        runs_done = list(results)  # the runs alone: controls and defenses each take these
        if spec.get("controls", True):
            results += run_controls(runs_done, executor, progress)
        entries = defense_entries(spec, resolve_sweep_path(path).parent)
        if entries:
            results += run_defenses(runs_done, entries, executor, progress)
            if spec.get("controls", True) and spec.get("clean_model", False):
                results += run_clean_model_defenses(runs_done, entries, executor, progress)
            if spec.get("controls", True) and any(e.get("retrain") for e in entries):
                results += run_retrain_controls(runs_done, entries, executor, progress)
    finally:
        if own:
            executor.close()
    write_json(SweepDir(out).status_path, results)
    return results


def _settle(status: dict, folder: Path, data: dict) -> dict:
    """A task's status; a worker that died (or was stopped for no progress) before answering is recorded in the
    run's manifest as failed."""
    status = dict(status)
    trace = status.pop("traceback", None)
    if trace is not None:
        _record_failure(folder, data, status["error"], trace)
    return status


def _print_step(what: str, i: int, n: int, result: dict) -> None:
    """One progress line of a sweep step: ``[what i/n] NAME: status (seconds) - error``."""
    print(f"[{what} {i}/{n}] {result['name']}: {result['status']} ({result['seconds']:.0f} s)"
          + (f" - {result['error']}" if result.get("error") else ""), flush=True)


def run_controls(results: list[dict], executor: Executor, progress: bool) -> list[dict]:
    """Each poisoned run's trigger scored on its clean control (``RUN/control.json``, see
    :mod:`medbackdoor.study.controls`); one status per run, named ``RUN:control``. Sweep key ``controls: false``
    turns this off."""
    from medbackdoor.study.controls import match_controls, score_control

    # the grid's runs only: the figure1 pair is never in the tables
    names = {Path(r["folder"]): r["name"] for r in results
             if r.get("status") in ("complete", "skipped (complete)") and not SweepDir.is_figure_run(r["name"])}
    pairs = match_controls(list(names))
    out = []
    for i, (k, status) in enumerate(executor.map(score_control, [(str(a), str(b)) for a, b in pairs]), 1):
        run = pairs[k][0]
        result = {"name": f"{names[run]}:control", "folder": str(RunDir(run).control_path),
                  **{key: v for key, v in status.items() if key != "traceback"}}
        out.append(result)
        if progress:
            _print_step("controls", i, len(pairs), result)
    out.sort(key=lambda x: x["name"])
    return out


def run_defenses(results: list[dict], entries: list[dict], executor: Executor, progress: bool) -> list[dict]:
    """Every defense on every complete run its ``where`` selects (each run's defenses in one task; a failure is
    recorded, never raised).

    Returns one status dict per (run, defense), named ``RUN:DEFENSE``; ``status`` is ``complete``, ``skipped``
    (done before), ``not applicable`` (e.g. an input defense on a label-only attack) or ``failed``. A run that no
    entry selects gets no task.
    """
    done = [r for r in results if r.get("status") in ("complete", "skipped (complete)")]
    chosen = [[e for e in entries if applies(e, RunDir(r["folder"]).config().to_dict())] for r in done]
    done, chosen = [r for r, c in zip(done, chosen) if c], [c for c in chosen if c]
    out = []
    # one task per run, its defenses in order: the run's data, model and features are loaded once
    tasks = [(r["folder"], c) for r, c in zip(done, chosen)]
    for i, (k, statuses) in enumerate(executor.map(_defend_run, tasks), 1):
        r, run_entries = done[k], chosen[k]
        if isinstance(statuses, dict):  # the worker died: every defense of this run failed
            statuses = [{key: v for key, v in statuses.items() if key != "traceback"}] * len(run_entries)
        for e, status in zip(run_entries, statuses):
            result = {"name": f"{r['name']}:{e['name']}",
                      "folder": str(RunDir(r["folder"]).defense_dir(e["name"])), **status}
            out.append(result)
            if progress:
                _print_step("defenses", i, len(done), result)
    out.sort(key=lambda x: x["name"])
    return out


def run_clean_model_defenses(results: list[dict], entries: list[dict], executor: Executor, progress: bool
                             ) -> list[dict]:
    """Every input defense and repair of a poisoned run again on its clean control's model, with the run's test
    inputs (``RUN/defenses/NAME/clean-model/``): the trigger-visibility baseline of a detector and the clean
    control put through the same repair. One task per clean control: each defense runs once on it and answers for
    the test inputs of every run it is the control of (:func:`~medbackdoor.defenses.runner.defend_clean_model`).
    One status per (run, defense), named ``RUN:NAME:clean-model``."""
    from medbackdoor.defenses.isolation import describe_all
    from medbackdoor.study.controls import match_controls

    names = {Path(r["folder"]): r["name"] for r in results if r.get("status") in ("complete", "skipped (complete)")
             and not SweepDir.is_figure_run(r["name"])}
    kinds = [d.kind for d in describe_all([(e["method"], e["options"]) for e in entries])]
    by_control: dict[str, list] = {}
    for run, control in match_controls(list(names)):
        config = RunDir(run).config().to_dict()
        chosen = [e for e, kind in zip(entries, kinds) if kind in ("input", "mitigation") and applies(e, config)]
        if chosen:
            by_control.setdefault(str(control), []).append((str(run), chosen))
    tasks = list(by_control.items())
    out = []
    for i, (k, statuses) in enumerate(executor.map(_defend_clean_model, tasks), 1):
        jobs = tasks[k][1]
        if isinstance(statuses, dict):  # the worker died: every defense of every run of this control failed
            statuses = [[{key: v for key, v in statuses.items() if key != "traceback"}] * len(chosen)
                        for _, chosen in jobs]
        for (run, chosen), run_statuses in zip(jobs, statuses):
            for e, status in zip(chosen, run_statuses):
                result = {"name": f"{names[Path(run)]}:{e['name']}:clean-model",
                          "folder": str(RunDir(run).clean_model_dir(e["name"])), **status}
                out.append(result)
                if progress:
                    _print_step("clean-model baselines", i, len(tasks), result)
    out.sort(key=lambda x: x["name"])
    return out


def _defend_clean_model(control: str, jobs: list[tuple[str, list[dict]]], threads: int) -> list[list[dict]]:
    """Sweep task: the input defenses and repairs of every run in ``jobs`` (folder, entries) on their clean
    ``control``'s model, each defense run once; per run, one status per entry, never raises."""
    import torch

    from medbackdoor.defenses.runner import defend_clean_model
    from medbackdoor.run import Run

    torch.set_num_threads(threads)
    start = time.perf_counter()
    try:
        runs = [(Run(folder), _requests(entries)) for folder, entries in jobs]
        answers = defend_clean_model(Run(control), runs)
    except Exception as exc:  # noqa: BLE001 - recorded per run, the sweep goes on
        answers = [[exc] * len(entries) for _, entries in jobs]
    seconds = (time.perf_counter() - start) / max(sum(len(entries) for _, entries in jobs), 1)
    return [_statuses(folder, entries, run_answers, [seconds] * len(entries), clean_model=True)
            for (folder, entries), run_answers in zip(jobs, answers)]


def run_retrain_controls(results: list[dict], entries: list[dict], executor: Executor, progress: bool) -> list[dict]:
    """For every cleanse-and-retrain of a poisoned run, its control: the run's clean control retrained after
    dropping as many random training samples as the cleanse dropped, scored on the run's trigger
    (``RUN/defenses/NAME/retrain_control.json``). One status per retrain, named ``RUN:NAME:retrain-control``."""
    from medbackdoor.defenses.summary import read_summary
    from medbackdoor.study.controls import clean_dropped, match_controls, retrain_control, train_random_drop

    names = {Path(r["folder"]): r["name"] for r in results if r.get("status") in ("complete", "skipped (complete)")
             and not SweepDir.is_figure_run(r["name"])}
    jobs, trainings = [], {}
    for run, control in match_controls(list(names)):
        for e in (e for e in entries if e.get("retrain")):
            path = RunDir(run).defense_summary_path(e["name"])
            summary = read_summary(path) if path.is_file() else None
            if summary is None or summary.retrain is None:
                continue
            jobs.append((str(run), str(control), e["name"]))
            trainings.setdefault((str(control), clean_dropped(run, e["name"])), None)
    # each (control, count) is trained once, before any scoring reads it (two runs may share one)
    for _ in executor.map(train_random_drop, list(trainings)):
        pass
    out = []
    for i, (k, status) in enumerate(executor.map(retrain_control, jobs), 1):
        run, _, name = jobs[k]
        result = {"name": f"{names[Path(run)]}:{name}:retrain-control",
                  "folder": str(RunDir(run).retrain_control_path(name)), **status}
        out.append(result)
        if progress:
            _print_step("retrain controls", i, len(jobs), result)
    out.sort(key=lambda x: x["name"])
    return out


def _defend_run(folder: str, entries: list[dict], threads: int) -> list[dict]:
    """Sweep task: a run's defenses, in one defense process per epoch and holdout (the run's data, model and
    features are loaded once), then the retrains asked for; one status per entry, never raises."""
    import torch

    from medbackdoor.defenses.runner import defend_run
    from medbackdoor.run import Run

    torch.set_num_threads(threads)
    start = time.perf_counter()
    run = None
    try:
        run = Run(folder)
        answers = defend_run(run, _requests(entries))
    except Exception as exc:  # noqa: BLE001 - every defense of this run failed; recorded, the sweep goes on
        answers = [exc] * len(entries)
    return _statuses(folder, entries, answers, _seconds_each(time.perf_counter() - start, answers), run=run)


def _seconds_each(total: float, answers: list) -> list[float]:
    """``total`` seconds split between the answers of one task: each summary's own defense seconds
    (``timings["defense_seconds"]``), plus an equal share of the rest (loading the run, starting the process,
    writing the materials). Where the recorded seconds exceed ``total`` (summaries reused from an earlier call), an
    equal share each."""
    own = [float((getattr(a, "timings", None) or {}).get("defense_seconds") or 0.0) for a in answers]
    if sum(own) > total:
        own = [0.0] * len(answers)
    rest = (total - sum(own)) / max(len(answers), 1)
    return [o + rest for o in own]


def _requests(entries: list[dict]) -> list:
    from medbackdoor.defenses.runner import DefenseRequest

    return [DefenseRequest(e["method"], e["name"], dict(e["options"]), e.get("epoch"), e.get("holdout"))
            for e in entries]


def _statuses(folder: str, entries: list[dict], answers: list, seconds: list[float], run=None,
              clean_model: bool = False) -> list[dict]:
    """One status per entry of a run's defense answers (then its retrains asked for, unless ``clean_model``), with
    the entry's ``seconds`` (its retrain's added). A failure is recorded where :meth:`RunDir.step_failure_path`
    says, never raised."""
    from medbackdoor.defenses.runner import DefenseFailed

    out = []
    for entry, answer, entry_seconds in zip(entries, answers, seconds):
        t0 = time.perf_counter()
        status, error = "complete", None
        if isinstance(answer, UserError):  # the defense does not apply to this run (e.g. nothing to detect)
            status, error = "not applicable", str(answer)
        elif isinstance(answer, BaseException):
            status, error = "failed", f"{type(answer).__name__}: {answer}"
            trace = answer.trace if isinstance(answer, DefenseFailed) else "".join(
                traceback.format_exception(answer))
            step = f"{entry['name']}:clean-model" if clean_model else entry["name"]
            write_text(RunDir(folder).step_failure_path(step), trace)
        elif not clean_model and entry.get("retrain") and answer.retrain is None:
            status, error = _retrain(run, entry["name"], answer)
        out.append({"status": status, "error": error, "seconds": entry_seconds + time.perf_counter() - t0})
    return out


def _retrain(run, name: str, summary) -> tuple[str, str | None]:
    from medbackdoor.defenses.runner import retrain

    try:
        retrain(run, name, summary, progress=False)
        return "complete", None
    except Exception as exc:  # noqa: BLE001 - recorded; the sweep goes on
        write_text(run.dir.defense_failure_path(name), traceback.format_exc())
        return "failed", f"{type(exc).__name__}: {exc}"


def sweep_cuts(out: str | Path) -> str | None:
    """The ``cuts`` note of the sweep that wrote ``out`` (what a reduced protocol left out), if any."""
    try:
        return (yaml.safe_load(SweepDir(out).spec_path.read_text()) or {}).get("cuts")
    except (FileNotFoundError, yaml.YAMLError):
        return None


def _run_one(data: dict, folder: str, threads: int) -> dict:
    """Worker: one run, resumed if unfinished, skipped if complete; never raises."""
    import torch

    from medbackdoor.train import run

    torch.set_num_threads(threads)
    start, folder = time.perf_counter(), Path(folder)
    before = run_state(folder)
    if before == "complete":
        return {"status": "skipped (complete)", "seconds": 0.0}
    try:
        config = config_from_data(data)
        force = before.startswith("failed")
        run(config, folder, resume=not force, force=force, progress=False)
        status, error = "complete", None
    except Exception as exc:  # noqa: BLE001 - a failed run is recorded and the sweep goes on
        status, error = "failed", f"{type(exc).__name__}: {exc}"
        _record_failure(folder, data, error, traceback.format_exc())
    return {"status": status, "error": error, "seconds": time.perf_counter() - start}


def _record_failure(folder: Path, data: dict, error: str, trace: str) -> None:
    run = RunDir(folder)
    manifest = run.manifest()
    if not manifest.exists:
        manifest.config = data
    manifest.fail(error, trace)
    run.write_manifest(manifest)
    if not run.exists():
        try:
            run.write_config(config_from_data(data))
        except UserError:
            pass
