"""``medbackdoor defend RUN --method NAME``: run defenses on a finished run and score them against the truth.

Writes ``RUN/defenses/NAME/``: ``scores.csv`` (one row per training sample, test input or label, by kind),
``summary.json`` (a :class:`~medbackdoor.defenses.summary.DefenseSummary`: detection AUROC, TPR at 1% and 5% FPR,
precision/recall of the flag rule; before/after metric columns for mitigations; seconds and ms per image) and
figures where they help. A second call with the same method, options, holdout and defender seed on the same
checkpoint (epoch and file digest) reuses what is there.

The defenses run in a process of their own that holds the defender's materials alone
(:mod:`medbackdoor.defenses.isolation`); this process keeps the truth (:class:`Truth`, from the run's attack
record) and scores their answers after they return. All the defenses asked of one run at one epoch and holdout run
in one such process, so its features are computed once.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medbackdoor._io import atomic_path, save_figure, write_rows
from medbackdoor.config import parse_assignment
from medbackdoor.defenses.base import DEFAULT_HOLDOUT, Truth
from medbackdoor.defenses.isolation import (
    PROCESS,
    Described,
    Materials,
    defender_seeds,
    describe_all,
    make_folder,
    remove_folder,
    run_child,
    write_materials,
)
from medbackdoor.defenses.scoring import detection_summary
from medbackdoor.defenses.summary import DefenseSummary, read_summary, write_summary
from medbackdoor.errors import UserError
from medbackdoor.metrics.columns import column_values, metric_columns, score_columns
from medbackdoor.run import Run

PROTOCOL = 2  # part of every request: answers of the in-process protocol (1) are computed again


class DefenseFailed(RuntimeError):
    """A defense raised inside its process; ``trace`` is its traceback there."""

    def __init__(self, message: str, trace: str = "") -> None:
        super().__init__(message)
        self.trace = trace


@dataclass
class DefenseRequest:
    """One defense asked of a run: ``method`` (a registered name or a plugin spec) with ``options``, into
    ``RUN/defenses/NAME`` (``name``; default the method, or a plugin's class name), at checkpoint ``epoch`` (None:
    the last) with ``holdout`` clean images (None: :data:`DEFAULT_HOLDOUT`)."""

    method: str
    name: str | None = None
    options: dict = field(default_factory=dict)
    epoch: int | None = None
    holdout: int | None = None

    def __post_init__(self) -> None:
        self.name = self.name or default_name(self.method)
        if self.holdout is not None and self.holdout < 2:
            raise UserError(f"--holdout must be at least 2, got {self.holdout}")


def default_name(method: str) -> str:
    """The output folder of ``method``: a registered name itself, a plugin spec's object name."""
    return method.rpartition(":")[2] if ":" in method else method


def create_defense(method: str, options: dict):
    """The registered defense ``method`` built from user options (unknown or ill-typed option: one line)."""
    from medbackdoor.defenses.base import DEFENSES

    return DEFENSES.create_checked(method, options, what=f"defense {method}")


def defend(run_dir: str | Path | Run, method: str, epoch: int | None = None, holdout: int | None = None,
           options: dict | None = None, force: bool = False, device: str | None = None,
           require_data: bool = False, name: str | None = None, defender_seed: int = 0,
           clean_model: Run | None = None) -> DefenseSummary:
    """Run ``method`` on the run in ``run_dir``; returns the summary (also written to ``summary.json``).

    ``require_data``: refuse any defense that is not a data defense (``--retrain`` needs flags per sample).
    ``name``: the output folder under ``RUN/defenses/`` (default: the method), e.g. to keep two option sets.
    ``defender_seed``: the root of the defender's seeds (the training order it sees, the test mix, its own draws).
    ``clean_model``: run it on that clean control's model instead (see :func:`defend_run`).

    Raises:
        UserError: a bad method or option, or the defense does not apply to this run (one line).
        DefenseFailed: the defense raised in its process.
    """
    run = run_dir if isinstance(run_dir, Run) else Run(run_dir)
    request = DefenseRequest(method, name, dict(options or {}), epoch, holdout)
    result = defend_run(run, [request], device, force, defender_seed, require_data, clean_model)[0]
    if isinstance(result, BaseException):
        raise result
    return result


def defend_run(run: Run, requests: list[DefenseRequest], device: str | None = None, force: bool = False,
               defender_seed: int = 0, require_data: bool = False, clean_model: Run | None = None
               ) -> list[DefenseSummary | Exception]:
    """Every request on ``run``: each answer is a summary or the exception that stopped it (a defense that does
    not apply, or one that failed); a bad method or option raises before anything runs.

    ``clean_model``: run the input defenses and repairs on that run's model instead (the clean control of
    ``run``: its weights, training set and holdout) with ``run``'s test inputs, and write them to
    ``RUN/defenses/NAME/clean-model/``: the same detector's response to the trigger where no backdoor is, and the
    clean control repaired and scored on ``run``'s trigger. Other kinds answer "not applicable".

    A summary on disk is reused when it answers the same request: method and its ``revision``, options (as given
    and as resolved with the defaults of the code that runs now), holdout, defender seed, the checkpoint (its epoch
    and file digest, :meth:`RunDir.checkpoint_fingerprint`) and :data:`PROTOCOL`. Anything else empties the
    defense's folder first.
    """
    described = describe_all([(r.method, r.options) for r in requests])
    if require_data:
        for r, d in zip(requests, described):
            if d.kind != "data":
                raise UserError(f"--retrain needs a data defense; {r.method} is a {d.kind} defense")
    for r in requests:
        run.dir.defense_dir(r.name)  # a bad folder name is one line before any work
    if clean_model is not None:
        return defend_clean_model(clean_model, [(run, requests)], device, force, defender_seed, described)[0]
    results: list = [None] * len(requests)
    groups: dict[tuple, list[int]] = {}
    keys = []
    for i, (r, d) in enumerate(zip(requests, described)):
        epoch = run.resolve_epoch(r.epoch)
        keys.append(_request_key(run, r, d, epoch, defender_seed))
        done = None if force else _reusable(run.dir.defense_dir(r.name), keys[i])
        if done is not None:
            results[i] = done
        else:
            groups.setdefault((epoch, r.holdout), []).append(i)
    for (epoch, holdout), members in groups.items():
        answers = _run_group(run, epoch, holdout, [requests[i] for i in members], [described[i] for i in members],
                             [keys[i] for i in members], device, defender_seed)
        for i, answer in zip(members, answers):
            results[i] = answer
    return results


def _request_key(run: Run, r: DefenseRequest, d: Described, epoch: int, defender_seed: int) -> dict:
    """What a summary answers (see :func:`defend_run`): a reusable summary's ``request`` equals it."""
    return {"method": r.method, "revision": d.revision, "options": r.options, "resolved": d.options,
            "epoch": epoch, "checkpoint": run.fingerprint(epoch), "holdout": r.holdout,
            "defender_seed": int(defender_seed), "protocol": PROTOCOL}


def defend_clean_model(clean: Run, jobs: list[tuple[Run, list[DefenseRequest]]], device: str | None = None,
                       force: bool = False, defender_seed: int = 0, described: list[Described] | None = None
                       ) -> list[list[DefenseSummary | Exception]]:
    """The clean-model baseline of several runs that share one clean control ``clean``: each job is a run and
    the requests asked of it; returns, per job, one summary or exception per request (see :func:`defend_run`).

    Each input defense and repair runs once on the clean control's model, training set and holdout (so it is
    calibrated once, and the control is repaired once), in one defense process, and answers for the test inputs
    of every job's run at once: each run's clean and triggered inputs, a clean test set two runs share written
    once, all in one mixed order. Each run's answer, its share of the scores, is written to
    ``RUN/defenses/NAME/clean-model/`` and scored on that run's truth and test rows. The materials hold the test
    inputs of every job whichever answers are already on disk, so an answer does not depend on which of them were
    reused. A built-in defense scores each input on its own, so a run's scores are those it gets alone; a random
    tie-break (``ties: random``) is drawn in the mixed order, so flags on scores tied with a calibration score can
    differ. ``described``: the requests of a single job, already described."""
    for run, _ in jobs:
        _check_clean_model(run, clean)
    if described is None or len(jobs) != 1:
        described_all = describe_all([(r.method, r.options) for _, requests in jobs for r in requests])
    else:
        described_all = list(described)
    model_epoch = clean.resolve_epoch(None)
    clean_key = {"run": clean.name, "epoch": model_epoch, "checkpoint": clean.fingerprint(model_epoch)}
    results = [[None] * len(requests) for _, requests in jobs]
    # one child request per holdout and set of distinct names: (holdout, slot) -> name -> (request, described, asked)
    groups: dict[tuple, dict[str, list]] = {}
    position = 0
    for k, (run, requests) in enumerate(jobs):
        for j, r in enumerate(requests):
            d = described_all[position]
            position += 1
            key = {**_request_key(run, r, d, run.resolve_epoch(r.epoch), defender_seed), "clean_model": clean_key}
            if d.kind not in CLEAN_MODEL_KINDS:
                results[k][j] = UserError(f"{r.name} is a {d.kind} defense: the clean-model baseline runs input "
                                          "defenses and repairs")
                continue
            if d.kind == "input" and run.data.test.triggered is run.data.test.clean:
                results[k][j] = UserError(LABEL_ONLY)
                continue
            done = None if force else _reusable(run.dir.clean_model_dir(r.name), key)
            if done is not None:
                results[k][j] = done
                continue
            spec = (r.method, json.dumps(r.options, sort_keys=True, default=str))
            slot = 0
            while True:
                group = groups.setdefault((r.holdout, slot), {})
                if r.name not in group or group[r.name][3] == spec:
                    break
                slot += 1
            group.setdefault(r.name, [r, d, [], spec])[2].append((k, j, key))
    for (holdout, _), group in groups.items():
        names = list(group)
        answers = _run_clean_group(clean, [run for run, _ in jobs], holdout, [group[n][0] for n in names],
                                   [group[n][1] for n in names], [group[n][2] for n in names], device,
                                   defender_seed)
        for n, per_name in zip(names, answers):
            for (k, j, _), answer in zip(group[n][2], per_name):
                results[k][j] = answer
    return results


LABEL_ONLY = ("this run's trigger changes no pixel (a label-only attack): an input defense has nothing to detect")


CLEAN_MODEL_KINDS = ("input", "mitigation")


def _check_clean_model(run: Run, clean: Run) -> None:
    """A clean model must take ``run``'s inputs and answer in its labels: the same architecture, image size and
    label columns (one line when not)."""
    for what, a, b in (("model.arch", run.config.model.arch, clean.config.model.arch),
                       ("image_size", run.config.image_size, clean.config.image_size),
                       ("labels", list(run.label_names), list(clean.label_names))):
        if a != b:
            raise UserError(f"--clean-model {clean.path}: its {what} is {b}, the run's is {a}; a clean model must "
                            "be the run's clean control (same setting, trigger fraction 0)")


def _out_dir(run: Run, name: str, clean_model: Run | None) -> Path:
    """Where defense ``name``'s answer goes: ``RUN/defenses/NAME/``, or its ``clean-model/`` folder."""
    return run.dir.defense_dir(name) if clean_model is None else run.dir.clean_model_dir(name)


def _reusable(folder: Path, key: dict) -> DefenseSummary | None:
    """The summary in ``folder`` when it answered request ``key`` (under the frozen defaults in force now) and its
    scores are there."""
    from medbackdoor.defaults import defaults_digest

    path = folder / "summary.json"
    if not path.is_file() or not (folder / "scores.csv").is_file():
        return None
    done = read_summary(path)
    return done if done.request == key and done.defaults_digest == defaults_digest() else None


def _run_group(run: Run, epoch: int, holdout: int | None, requests: list[DefenseRequest], described: list[Described],
               keys: list[dict], device: str | None, defender_seed: int) -> list:
    """One defense process for ``requests`` (same epoch and holdout): materials, the child, then the scoring."""
    PROCESS.start()  # its imports overlap the data and the materials below
    data = run.data
    answers: list = [None] * len(requests)
    label_only = data.test.triggered is data.test.clean
    runnable = []
    for i, d in enumerate(described):
        if d.kind == "input" and label_only:
            answers[i] = UserError(LABEL_ONLY)
        else:
            runnable.append(i)
    if not runnable:
        return answers
    truth = truth_of(run)
    folder = make_folder()
    try:
        t0 = time.perf_counter()
        materials = _materials(run, folder, epoch, holdout, defender_seed,
                               any(described[i].kind in ("input", "mitigation") for i in runnable))
        index, child_seconds = _child(run, folder, materials, [requests[i] for i in runnable], device)
        for i, answer in zip(runnable, index["defenses"]):
            timings = {"materials_seconds": round(materials.seconds, 3), "child_seconds": round(child_seconds, 3),
                       "startup_seconds": round(index["startup_seconds"], 3),
                       "defense_seconds": round(answer["seconds"], 3), "run_defenses": len(runnable)}
            answers[i] = _settle(run, requests[i], described[i], keys[i], answer, folder / "answers" / answer["name"],
                                 materials, truth, epoch, timings, time.perf_counter() - t0, defender_seed)
    finally:
        remove_folder(folder)
    return answers


def _child(run: Run, folder: Path, materials: Materials, requests: list[DefenseRequest], device: str | None
           ) -> tuple[dict, float]:
    """The defense process's answers to ``requests`` on ``materials`` (``run``'s settings: device, batch size,
    labels, training recipe), and the seconds it took."""
    request = {"mode": "defend", "device": str(run.device(device)), "batch_size": run.config.eval.batch_size,
               "seed": materials.seed, "label_names": list(run.data.dataset.label_names),
               "dataset": run.config.dataset.name, "task": run.data.dataset.task.kind,
               "training": _training_recipe(run),
               "defenses": [{"name": r.name, "method": _portable(r.method), "options": r.options}
                            for r in requests]}
    start = time.perf_counter()
    index = run_child(folder, request)
    return index, time.perf_counter() - start


def _run_clean_group(clean: Run, runs: list[Run], holdout: int | None, requests: list[DefenseRequest],
                     described: list[Described], asked: list[list[tuple]], device: str | None,
                     defender_seed: int) -> list[list]:
    """One defense process on ``clean``'s model for ``requests`` (distinct names, one holdout), with the test
    inputs of every run in ``runs``; ``asked[i]`` lists the (run index, request index, key) that asked for request
    ``i``. Returns, per request, one answer per entry of ``asked[i]``."""
    PROCESS.start()
    truth = truth_of(clean)
    folder = make_folder()
    answers = [[None] * len(a) for a in asked]
    try:
        t0 = time.perf_counter()
        parts, where = _test_parts(runs)
        materials = _materials(clean, folder, clean.resolve_epoch(None), holdout, defender_seed, False,
                               test_parts=parts)
        index, child_seconds = _child(runs[0], folder, materials, requests, device)
        for i, answer in enumerate(index["defenses"]):
            timings = {"materials_seconds": round(materials.seconds, 3), "child_seconds": round(child_seconds, 3),
                       "startup_seconds": round(index["startup_seconds"], 3),
                       "defense_seconds": round(answer["seconds"], 3), "run_defenses": len(requests),
                       "runs_sharing": len(runs)}
            for a, (k, _, key) in enumerate(asked[i]):
                share, own = _share(folder, answer["name"], described[i].kind, materials, where[k], k)
                answers[i][a] = _settle(runs[k], requests[i], described[i], key, answer, share, own, truth,
                                        key["epoch"], timings, time.perf_counter() - t0, defender_seed, clean)
    finally:
        remove_folder(folder)
    return answers


def _test_parts(runs: list[Run]) -> tuple[list, list[tuple[int, int | None]]]:
    """The test inputs of ``runs`` as parts of one set: each run's clean inputs (written once where two runs have
    the same test rows and pixels) and its triggered ones (none for a label-only trigger). Returns the parts and,
    per run, the indices of its clean and its triggered part."""
    parts, where, seen = [], [], []  # seen: (rows, pixels, part index) of each clean part written
    for run in runs:
        test = run.data.test
        pixels = np.asarray(test.clean[: len(test.clean)])
        c = next((i for rows, seen_pixels, i in seen
                  if np.array_equal(rows, test.rows) and np.array_equal(seen_pixels, pixels)), None)
        if c is None:
            c = len(parts)
            seen.append((np.asarray(test.rows), pixels, c))
            parts.append(test.clean)
        t = None
        if test.triggered is not test.clean:
            t = len(parts)
            parts.append(test.triggered)
        where.append((c, t))
    return parts, where


# the arrays a child answers per test input, by kind: split into each run's share of the test inputs
TEST_ARRAYS = {"input": ("scores.npy", "flagged.npy"), "mitigation": ("before.npy", "after.npy")}


def _share(folder: Path, name: str, kind: str, m: Materials, where: tuple[int, int | None], k: int
           ) -> tuple[Path, Materials]:
    """One run's share of a defense's answer on the test inputs of several runs: a folder with its per-input
    arrays cut to the run's clean and triggered inputs (in that order; any other answer file as it is), and the
    materials that read it back."""
    answer = folder / "answers" / name
    out = folder / "shares" / str(k) / name
    out.mkdir(parents=True, exist_ok=True)
    clean, triggered = where
    for path in answer.iterdir():
        if path.name in TEST_ARRAYS[kind]:
            values = m.parts(np.load(path))
            mine = values[clean] if triggered is None else np.concatenate([values[clean], values[triggered]])
            np.save(out / path.name, mine)
        else:
            shutil.copy2(path, out / path.name)
    n_clean = m.part_sizes[clean]
    n = n_clean + (0 if triggered is None else m.part_sizes[triggered])
    return out, Materials(m.folder, m.train_order, np.arange(n), n_clean, m.n_holdout, m.seconds, m.seed)


def _portable(method: str) -> str:
    from medbackdoor._registry import plugin_spec

    return plugin_spec(method)


def truth_of(run: Run) -> Truth:
    """The truth a defense is scored against: the run's attack record."""
    record = run.attack
    if len(record["poisoned"]) != len(run.data.train):
        raise UserError(f"{run.dir.attack_path} records {len(record['poisoned'])} training samples, the run's data "
                        f"has {len(run.data.train)}: the data changed since the run was made")
    mask = record["trigger_mask"]
    cross = record["cross"] if "cross" in record else np.zeros(len(record["poisoned"]), bool)
    return Truth(poisoned=np.asarray(record["poisoned"], bool), target=int(record["target"]),
                 trigger_mask=mask if mask.size else None, trigger_mask_reason=str(record["trigger_mask_reason"]),
                 extra={"cross": np.asarray(cross, bool)})


def _materials(run: Run, folder: Path, epoch: int, holdout: int | None, defender_seed: int, with_test: bool,
               test_parts: list | None = None) -> Materials:
    """The defender's materials of ``run`` at ``epoch``: its weights, the training set as trained, the first
    ``holdout`` images of the validation split and (``with_test``) its test inputs, clean and triggered, or the
    given ``test_parts`` (other runs' test inputs, for the clean-model baseline)."""
    from medbackdoor.data.views import ImageRows, SampleImages

    data, config = run.data, run.config
    state = run.dir.load_state(epoch)["model"]
    recipe = {"arch": config.model.arch, "options": dict(config.model.options), "image_size": config.image_size,
              "num_classes": len(data.dataset.label_names), "label_names": list(data.dataset.label_names),
              "channels_last": config.train.channels_last, "pretrained": str(config.model.pretrained)}
    n_hold = min(len(data.val), holdout or DEFAULT_HOLDOUT)
    rows = data.val.indices[:n_hold]
    seeds = defender_seeds(defender_seed, run.fingerprint(epoch))
    if test_parts is None and with_test:
        test = data.test
        test_parts = [test.clean] if test.triggered is test.clean else [test.clean, test.triggered]
    return write_materials(folder, state, recipe, SampleImages(data.train), data.train.labels_array(),
                           ImageRows(data.images, rows), data.val.labels[rows], seeds=seeds, test_parts=test_parts)


def _training_recipe(run: Run) -> dict:
    """The run's ``train`` settings a defense that trains may use: the speed and optimisation settings, without
    anything that names a file or the run's seed."""
    import dataclasses

    tc = dataclasses.asdict(run.config.train)
    for key in ("drop", "log", "keep_checkpoints", "device", "workers", "backend", "sync_bn", "compile",
                "cuda_graph", "abl", "seed"):
        tc.pop(key, None)
    return tc


def _settle(run: Run, r: DefenseRequest, d: Described, key: dict, answer: dict, folder: Path, materials: Materials,
            truth: Truth, epoch: int, timings: dict, seconds: float, defender_seed: int,
            clean_model: Run | None = None):
    """A child's answer for one defense as a written summary, or the exception it stands for."""
    from medbackdoor.defaults import defaults_digest

    if answer["status"] == "user_error":
        return UserError(answer["error"])
    if answer["status"] != "complete":
        return DefenseFailed(answer["error"], answer.get("traceback", ""))
    out = _out_dir(run, r.name, clean_model)
    shutil.rmtree(out, ignore_errors=True)  # another request's outputs (the defense's clean-model baseline too)
    out.mkdir(parents=True, exist_ok=True)
    scorer = {"data": _data, "input": _input, "model": _model, "mitigation": _mitigation}[d.kind]
    rows, extra = scorer(run, r.name, answer, folder, materials, truth, out)
    config = run.config
    summary = DefenseSummary(
        name=r.name, method=r.method, kind=d.kind, run=str(run.path), epoch=epoch,
        holdout=materials.n_holdout, request=key, paper=d.paper,
        changes=d.changes, options=d.options,
        metric_columns={c.name: c.label for c in metric_columns(config.eval, run.data.test.condition is not None,
                                                               run.data.dataset.task)},
        seconds=round(seconds, 3), ms_per_image=round(1000 * answer["seconds"] / max(extra.get("images_scored", 1), 1),
                                                      3),
        origin=d.origin, timings=timings, defender_seed=int(defender_seed), defaults_digest=defaults_digest(),
        clean_model=None if clean_model is None else key["clean_model"], **extra)
    write_rows(out / "scores.csv", rows)
    write_summary(out / "summary.json", summary)
    return summary


def retrain(run_dir: str | Path | Run, name: str, summary: DefenseSummary, progress: bool = True) -> dict:
    """Cleanse and retrain: drop what the data defense flagged and train the run's own config again.

    The new run goes to ``RUN/defenses/NAME/retrain`` (an ordinary run folder, resumable) with ``train.drop``
    naming the flagged positions; returns its last-epoch metrics beside the original run's, in the run's metric
    columns (:func:`~medbackdoor.metrics.metric_columns` of its ``eval`` settings).
    """
    from medbackdoor.config import load_config
    from medbackdoor.train import run as train_run

    run = run_dir if isinstance(run_dir, Run) else Run(run_dir)
    flagged = summary.flagged_positions
    drop = run.dir.retrain_drop_path(name)
    text = f"# {len(flagged)} training samples flagged by {summary.method} ({name})\n"
    text += "".join(f"{i}\n" for i in flagged)
    if not drop.is_file() or drop.read_text() != text:
        with atomic_path(drop, suffix=".txt") as tmp:
            tmp.write_text(text)
    config = load_config(run.dir.config_path, [f"train.drop={drop.resolve()}"])
    new = run.dir.retrain_dir(name)
    train_run(config, new.path, resume=True, progress=progress)
    before, after = run.dir.metrics()[-1], new.metrics()[-1]
    task = run.data.dataset.task
    names = [c.name for c in metric_columns(config.eval, task=task) if c.name in before and c.name in after]
    names += [c.name for c in metric_columns(config.eval, True, task)
              if c.group == "off" and c.name in before and c.name in after]
    result = {"run": str(new.path), "dropped": len(flagged),
              "before": {k: float(before[k]) for k in names}, "after": {k: float(after[k]) for k in names}}
    summary.retrain = result
    write_summary(run.dir.defense_summary_path(name), summary)
    return result


# --- one function per kind: read the answer back, then score it -------------------------------------------------

def _data(run: Run, name: str, answer: dict, folder: Path, m: Materials, truth: Truth, out: Path):
    scores = m.as_trained(np.load(folder / "scores.npy"))
    flagged = m.as_trained(np.load(folder / "flagged.npy")).astype(bool)
    if len(scores) != len(truth.poisoned):
        raise RuntimeError(f"data defense returned {len(scores)} scores for {len(truth.poisoned)} samples")
    with np.load(folder / "columns.npz", allow_pickle=False) as z:
        columns = {k: m.as_trained(z[k]) for k in z.files}
    train = run.data.train
    base_rows = train.base.indices[train.sample_positions()]
    cross = truth.extra["cross"]
    rows = [{"sample": i, "dataset_row": int(base_rows[i]), "score": float(scores[i]), "flagged": bool(flagged[i]),
             "poisoned": bool(truth.poisoned[i]), "cross": bool(cross[i]), **{k: v[i] for k, v in columns.items()}}
            for i in range(len(scores))]
    summary = {"detection": _detection(truth, scores, flagged), "info": answer.get("info"),
               "images_scored": len(scores), "flagged_positions": np.flatnonzero(flagged).tolist(),
               "cross_samples": _cross(truth, flagged)}
    _roc_figure(out / "roc.png", truth.poisoned[~cross], scores[~cross],
                "data defense: poisoned training samples")
    return rows, summary


def _detection(truth: Truth, scores: np.ndarray, flagged: np.ndarray) -> dict:
    """Detection of the poisoned samples among the clean ones; the attack's cross and cover samples (clean labels,
    not poisoned) are left out (see :func:`_cross`)."""
    keep = ~truth.extra["cross"]
    return detection_summary(truth.poisoned[keep], scores[keep], flagged[keep])


def _cross(truth: Truth, flagged: np.ndarray) -> dict:
    """How many of the attack's cross and cover samples were flagged, and their share."""
    cross = truth.extra["cross"]
    n, hit = int(cross.sum()), int((flagged & cross).sum())
    return {"n": n, "flagged": hit, "flagged_rate": hit / n if n else float("nan")}


def _input(run: Run, name: str, answer: dict, folder: Path, m: Materials, truth: Truth, out: Path):
    test = run.data.test
    clean, triggered = m.unmix(np.load(folder / "scores.npy"))
    clean_flags, triggered_flags = m.unmix(np.load(folder / "flagged.npy").astype(bool))
    rows = []
    for what, scores, flags in (("clean", clean, clean_flags), ("triggered", triggered, triggered_flags)):
        rows += [{"set": what, "test_row": int(test.rows[i]), "score": float(s), "flagged": bool(f)}
                 for i, (s, f) in enumerate(zip(scores, flags))]
    y = np.r_[np.zeros(len(clean), bool), np.ones(len(triggered), bool)]
    s, flagged = np.r_[clean, triggered], np.r_[clean_flags, triggered_flags]
    det = detection_summary(y, s, flagged)
    survived = np.asarray(test.survived, bool)
    if not survived.all():  # images the trigger did not change are clean in fact: score those that changed
        keep = np.r_[np.ones(len(clean), bool), survived]
        det["survived_only"] = detection_summary(y[keep], s[keep], flagged[keep])
    _roc_figure(out / "roc.png", y, s, "input defense: triggered test images")
    return rows, {"detection": det, "threshold": answer["threshold"], "calibration": answer["calibration"],
                  "calibration_images": answer["calibration_images"], "images_scored": len(s),
                  "info": answer.get("info")}


def _model(run: Run, name: str, answer: dict, folder: Path, m: Materials, truth: Truth, out: Path):
    names = list(run.data.dataset.label_names)
    scores = np.load(folder / "scores.npy")
    flagged = np.load(folder / "flagged.npy").astype(bool)
    order = np.argsort(-scores, kind="stable")
    rank = int(np.flatnonzero(order == truth.target)[0]) + 1 if len(scores) else None
    rows = [{"label": label, "score": float(scores[i]), "flagged": bool(flagged[i]), "target": i == truth.target}
            for i, label in enumerate(names)]
    summary = {"backdoored_verdict": bool(answer["backdoored"]),
               "flagged_labels": [names[i] for i in np.flatnonzero(flagged)], "target": names[truth.target],
               "target_rank": rank, "target_flagged": bool(flagged[truth.target]),
               "poisoned_run": bool(truth.poisoned.any()), "info": answer.get("info"), "images_scored": m.n_holdout}
    if (folder / "masks.npy").is_file():
        patterns = np.load(folder / "patterns.npy") if (folder / "patterns.npy").is_file() else None
        summary["reversed_trigger"] = _reversed(out / "reversed_triggers.png",
                                                np.load(folder / "masks.npy"), patterns, truth, names)
    return rows, summary


def _mitigation(run: Run, name: str, answer: dict, folder: Path, m: Materials, truth: Truth, out: Path):
    before, after = _metrics(run, m, np.load(folder / "before.npy")), _metrics(run, m, np.load(folder / "after.npy"))
    rows = [{"when": when, **values} for when, values in (("before", before), ("after", after))]
    summary = {"before": before, "after": after, "images_scored": 2 * len(run.data.test), "info": answer.get("info")}
    if (folder / "losses.npy").is_file():  # a defense that trained: score its isolation too
        losses = m.as_trained(np.load(folder / "losses.npy"))
        flagged = np.zeros(len(losses), bool)
        flagged[m.train_positions(np.load(folder / "isolated.npy"))] = True
        summary.update(detection=_detection(truth, -losses, flagged), cross_samples=_cross(truth, flagged),
                       flagged_positions=np.flatnonzero(flagged).tolist(),
                       images_scored=summary["images_scored"] + len(losses))
        summary["info"] = {**(summary["info"] or {}), "isolated": int(flagged.sum()),
                           "poisoned_isolated": int((flagged & truth.poisoned).sum())}
    return rows, summary


def _metrics(run: Run, m: Materials, scores: np.ndarray) -> dict:
    """The run's metric columns (:func:`~medbackdoor.metrics.metric_columns` of its ``eval`` settings and task:
    ASR at each p, strict or not, AUROC-TT/NN/TN, mixed ε, or a single-label task's columns) of a model's scores
    of the mixed test inputs; for multi-label also ``auroc_nn_macro`` (AUROC-NN as the mean of the per-class
    AUROCs; a single-label task has ``auroc_macro`` among its columns)."""
    from medbackdoor.metrics.multilabel import mean_auroc

    config, data = run.config, run.data
    clean, triggered = m.unmix(scores)
    if not len(triggered):  # a label-only trigger: the triggered inputs are the clean ones
        triggered = clean
    task = data.dataset.task
    values = score_columns(config.eval, data.test.labels, clean, triggered, data.target, config.attack_seed,
                           config.trigger.label, data.test.carriers, data.test.condition, task)
    columns = metric_columns(config.eval, data.test.condition is not None, task)
    if task.single_label:
        return column_values(columns, values)
    return {**column_values(columns, values), "auroc_nn_macro": mean_auroc(data.test.labels, clean)}


def _reversed(path: Path, masks, patterns, truth: Truth, names) -> dict:
    """The target's reversed-trigger mask against the true trigger, and a figure of all masks.

    ``iou_with_true_trigger``: IoU of the target mask's top-k pixels (k = the true mask's size) with the true mask,
    reported only where the trigger has one fixed, localised mask (the run's attack record, see
    :func:`medbackdoor.experiment.trigger_footprint`); otherwise NaN, and ``iou_reason`` says why.
    ``mask_l1_target``: the L1 norm of the target's reversed mask.
    """
    masks = np.asarray(masks, np.float32)
    m = masks[truth.target]
    result = {"iou_with_true_trigger": float("nan"), "iou_reason": truth.trigger_mask_reason or "no true mask",
              "mask_l1_target": float(m.sum())}
    true = truth.trigger_mask
    if true is not None and m.shape != true.shape:
        result["iou_reason"] = f"the reversed masks are {m.shape}, the trigger's mask {true.shape}"
    elif true is not None:
        result.update(iou_with_true_trigger=_top_k_iou(m, true), iou_reason="")
    _mask_figure(path, masks, names)
    return result


def _top_k_iou(scores: np.ndarray, mask: np.ndarray) -> float:
    """IoU of the ``mask.sum()`` highest-scoring pixels with ``mask``."""
    k = max(int(mask.sum()), 1)
    top = np.zeros(scores.size, bool)
    top[np.argsort(-scores.ravel(), kind="stable")[:k]] = True
    top = top.reshape(scores.shape)
    inter, union = (top & mask).sum(), (top | mask).sum()
    return float(inter / union) if union else float("nan")


def _roc_figure(path: Path, y, scores, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    y = np.asarray(y, bool)
    if y.all() or not y.any():
        return
    s = np.nan_to_num(np.asarray(scores, np.float64), nan=-1e300, neginf=-1e300, posinf=1e300)
    fpr, tpr, _ = roc_curve(y, s)
    fig, ax = plt.subplots(figsize=(3.6, 3.4))
    ax.plot(fpr, tpr)
    ax.plot([0, 1], [0, 1], ls=":", c="gray")
    ax.set(xlabel="false-positive rate", ylabel="true-positive rate", title=title)
    ax.title.set_fontsize(8)
    fig.tight_layout()
    save_figure(fig, path.parent, path.stem, ("png",))
    plt.close(fig)


def _mask_figure(path: Path, masks: np.ndarray, names) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(masks)
    cols = min(n, 7)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(1.5 * cols, 1.6 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i, (ax, m) in enumerate(zip(axes.ravel(), masks)):
        ax.imshow(m, cmap="magma", vmin=0, vmax=1)
        ax.set_title(str(names[i])[:12], fontsize=6)
    fig.tight_layout()
    save_figure(fig, path.parent, path.stem, ("png",))
    plt.close(fig)


def parse_options(pairs: list[str]) -> dict:
    """``--set key=value`` pairs as defense options (read by :func:`~medbackdoor.config.parse_assignment`)."""
    return dict(parse_assignment(pair) for pair in pairs)

