"""The trigger on a model that never saw it: every attack's trigger scored on the matching clean control.

ASR counts triggered test images whose target score passes p. A model trained on clean data alone can do that
too, when the trigger happens to look like a finding (a dark square, a blend pattern): its *natural response*.
Without it, a high ASR after a perfect cleanse reads as a failed defense. So after a sweep's runs, every
poisoned run is paired with its clean control: the run with ρ = 0 and the same config but for ``trigger.*``
(the same seed, data, model and training). The control's model, at its last complete epoch, scores the poisoned
run's triggered test set with the run's own metric settings; the result goes to ``RUN/control.json``.

It is one more scoring of the test set per run (each run already scores it every epoch), done by the sweep's
executor on the runs' device. The report only reads the files (:func:`control_rows`). ``control.json`` records
what it was computed from (the control, its epoch and checkpoint, the run's config), so a re-run sweep scores
again only what changed. Checkpoints are loaded with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import json
import time
import traceback
from pathlib import Path

import numpy as np

from medbackdoor._io import write_json, write_text
from medbackdoor.config import NEUTRAL_KEYS, flatten
from medbackdoor.run import Run
from medbackdoor.rundir import RunDir

IGNORED = ("trigger.", "train.drop")


def _setting(config: dict) -> str:
    """What must match between a run and its control: every key but the trigger's and the neutral ones."""
    return json.dumps({k: v for k, v in config.items() if not k.startswith(IGNORED) and k not in NEUTRAL_KEYS},
                      sort_keys=True, default=str)


def match_controls(folders: list[str | Path]) -> list[tuple[Path, Path]]:
    """(poisoned run, its clean control) folder pairs among ``folders`` (complete runs). Among several clean
    controls of one setting (they train alike: ρ = 0 ignores the trigger) the first by name is taken."""
    configs = {Path(f): flatten(RunDir(f).config().to_dict()) for f in sorted(map(str, folders))}
    controls: dict[str, Path] = {}
    for folder, config in configs.items():
        if not config.get("trigger.fraction"):
            controls.setdefault(_setting(config), folder)
    return [(folder, controls[_setting(config)]) for folder, config in configs.items()
            if config.get("trigger.fraction") and _setting(config) in controls]


def _fingerprint(run: Path, control: Path, epoch: int) -> dict:
    """What a control scoring was computed from: the control, its epoch and checkpoint digest, and the run's
    config (which sets the triggered test set and the metric settings)."""
    config = hashlib.sha256(RunDir(run).config_path.read_bytes()).hexdigest()[:16]
    return {"control": control.name, "control_epoch": epoch,
            "control_checkpoint": RunDir(control).checkpoint_fingerprint(epoch), "run_config": config}


def control_response(run: Run, control: Run, device: str = "auto") -> dict:
    """The clean control's backdoor metrics on ``run``'s triggered test set, at the control's last complete
    epoch, with the fingerprint of what they were computed from (a single-label run's: ASR, R-Acc and the clean
    accuracy, balanced accuracy and macro AUROC)."""
    import torch

    from medbackdoor.errors import UserError
    from medbackdoor.experiment import build_trigger
    from medbackdoor.inference import predict
    from medbackdoor.metrics import score_columns

    epoch = control.last_complete_epoch()
    if not epoch:
        raise UserError(f"clean control {control.name} has no checkpoint to score with")
    config, test = run.config, run.test
    _, target = build_trigger(config, test.label_names)
    dev = run.device(device)
    model = control.model(epoch, dev)
    with torch.no_grad():
        clean = _saved_clean_scores(control.dir, epoch, test.rows)
        if clean is None:
            clean = predict(model, test.clean, dev, config.eval.batch_size, task=test.task)
        triggered = clean if test.triggered is test.clean else predict(model, test.triggered, dev,
                                                                        config.eval.batch_size, task=test.task)
    m = score_columns(config.eval, test.labels, clean, triggered, target, config.attack_seed, config.trigger.label,
                      test.carriers, test.condition, test.task)
    keys = (("asr", "racc", "accuracy", "balanced_accuracy", "auroc_macro") if test.task.single_label
            else ("asr", "asr_off", "auroc_tt", "auroc_tn", "auroc_nn"))
    return {**_fingerprint(run.path, control.path, epoch), **{k: m[k] for k in keys}}


def _saved_clean_scores(ctrl: RunDir, epoch: int, rows):
    """The control's own clean test scores at ``epoch``, from its predictions file, when that scored the same
    test rows (it does within a sweep: the test split depends on the data settings alone); else None."""
    import numpy as np

    if not ctrl.predictions_path(epoch).is_file():
        return None
    saved = ctrl.load_predictions(epoch)
    if "rows" not in saved or not np.array_equal(saved["rows"], rows):
        return None
    return saved["score_clean"]


def score_control(run: str, control: str, threads: int) -> dict:
    """Sweep task: write ``run/control.json`` unless it is up to date; a status dict, never raises."""
    import torch

    torch.set_num_threads(threads)
    start = time.perf_counter()
    path = RunDir(run).control_path
    try:
        epoch = RunDir(control).last_complete_epoch()
        if path.is_file() and epoch:
            old = json.loads(path.read_text())
            if all(old.get(k) == v for k, v in _fingerprint(Path(run), Path(control), epoch).items()):
                return {"status": "skipped (complete)", "error": None, "seconds": time.perf_counter() - start}
        write_json(path, control_response(Run(run), Run(control)))
        RunDir(run).control_failure_path.unlink(missing_ok=True)
        status, error = "complete", None
    except Exception as exc:  # noqa: BLE001 - recorded; the sweep goes on
        status, error = "failed", f"{type(exc).__name__}: {exc}"
        write_text(RunDir(run).control_failure_path, traceback.format_exc())
    return {"status": status, "error": error, "seconds": time.perf_counter() - start}


# --- the cleanse-and-retrain control: the clean control retrained after dropping as many random samples ------------

def random_drop_positions(n: int, count: int, seed: int) -> np.ndarray:
    """``count`` distinct training positions of ``range(n)``, drawn by ``default_rng([seed, count, 9])``, sorted."""
    return np.sort(np.random.default_rng([int(seed), int(count), 9]).choice(n, size=min(int(count), n), replace=False))


def random_drop_retrain(control: str | Path, count: int, progress: bool = False) -> Path:
    """Train the clean ``control``'s own config again without ``count`` random training samples (resumable);
    returns the folder (``CONTROL/defenses/random-drop-COUNT/retrain``)."""
    from medbackdoor._io import atomic_path
    from medbackdoor.config import load_config
    from medbackdoor.train import run as train_run

    ctrl = RunDir(control)
    config = ctrl.config()
    n = int(ctrl.manifest().dataset.get("train_samples", 0))
    if n <= 0:
        raise RuntimeError(f"{ctrl.path} records no training samples")
    new = ctrl.random_drop_dir(count)
    new.path.parent.mkdir(parents=True, exist_ok=True)
    drop = ctrl.random_drop_list_path(count)
    positions = random_drop_positions(n, count, config.train.seed)
    text = f"# {len(positions)} random training samples of the clean control\n" + "".join(f"{i}\n" for i in positions)
    if not drop.is_file() or drop.read_text() != text:
        with atomic_path(drop, suffix=".txt") as tmp:
            tmp.write_text(text)
    train_run(load_config(ctrl.config_path, [f"train.drop={drop.resolve()}"]), new.path, resume=True,
              progress=progress)
    return new.path


def train_random_drop(control: str, count: int, threads: int) -> dict:
    """Sweep task: :func:`random_drop_retrain`; a status dict, never raises."""
    import torch

    torch.set_num_threads(threads)
    start = time.perf_counter()
    try:
        random_drop_retrain(control, count)
        return {"status": "complete", "error": None, "seconds": time.perf_counter() - start}
    except Exception as exc:  # noqa: BLE001 - recorded; the sweep goes on
        return {"status": "failed", "error": f"{type(exc).__name__}: {exc}", "seconds": time.perf_counter() - start}


def clean_dropped(run: str | Path, name: str) -> int:
    """How many clean (not poisoned) training samples defense ``name``'s cleanse of ``run`` dropped: what its
    random-drop control drops from the clean control (the poisoned ones it dropped are the cleanse's point)."""
    import pandas as pd

    scores = pd.read_csv(RunDir(run).defense_scores_path(name), usecols=["flagged", "poisoned"])
    return int((scores["flagged"].astype(bool) & ~scores["poisoned"].astype(bool)).sum())


def retrain_control(run: str, control: str, name: str, threads: int) -> dict:
    """Sweep task: for defense ``name``'s cleanse-and-retrain of ``run``, retrain the clean ``control`` without as
    many random samples as the cleanse dropped clean ones (:func:`clean_dropped`) and score it on ``run``'s
    trigger (``RUN/defenses/NAME/retrain_control.json``); a status dict, never raises."""
    import torch

    from medbackdoor.defenses.summary import read_summary

    torch.set_num_threads(threads)
    start = time.perf_counter()
    try:
        summary = read_summary(RunDir(run).defense_summary_path(name))
        if summary.retrain is None:
            return {"status": "not applicable", "error": f"{name} has no retrain", "seconds": 0.0}
        dropped = clean_dropped(run, name)
        folder = random_drop_retrain(control, dropped)
        path = RunDir(run).retrain_control_path(name)
        epoch = RunDir(folder).last_complete_epoch()
        if path.is_file() and all(json.loads(path.read_text()).get(k) == v
                                  for k, v in _fingerprint(Path(run), Path(folder), epoch).items()):
            return {"status": "skipped (complete)", "error": None, "seconds": time.perf_counter() - start}
        write_json(path, {**control_response(Run(run), Run(folder)), "dropped": dropped,
                          "cleanse_dropped": int(summary.retrain["dropped"])})
        return {"status": "complete", "error": None, "seconds": time.perf_counter() - start}
    except Exception as exc:  # noqa: BLE001 - recorded; the sweep goes on
        return {"status": "failed", "error": f"{type(exc).__name__}: {exc}", "seconds": time.perf_counter() - start}
