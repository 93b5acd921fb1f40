"""``medbackdoor defend RUN --method NAME``: run one defense on a finished run and score it against the truth.

Writes ``RUN/defenses/NAME/``: ``scores.csv`` (one row per training sample, test image or label, by kind),
``summary.json`` (a :class:`~medbackdoor.defenses.summary.DefenseSummary`: detection AUROC, TPR at 1% and 5% FPR,
precision/recall of the flag rule; before/after metric columns for mitigations; seconds and ms per image) and
figures where they help. A second call with the same method, options and holdout on the same checkpoint (epoch
and file digest) reuses what is there.

The defense gets a :class:`~medbackdoor.defenses.base.Defender` only; the :class:`Truth` built here is used
after it returns, to score it.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np

from medbackdoor._io import atomic_path, save_figure, write_rows
from medbackdoor.config import RunConfig, parse_assignment
from medbackdoor.defenses.base import DEFENSES, Defender, Images, Truth
from medbackdoor.defenses.scoring import detection_summary
from medbackdoor.defenses.summary import DefenseSummary, read_summary, write_summary
from medbackdoor.errors import UserError
from medbackdoor.metrics.columns import column_values, metric_columns, score_columns
from medbackdoor.rundir import RunDir

DEFAULT_HOLDOUT = 1000


def create_defense(method: str, options: dict):
    """The registered defense ``method`` built from user options (unknown or ill-typed option: one line)."""
    return DEFENSES.create_checked(method, options, what=f"defense {method}")


_LAST: dict = {}  # the last loaded (defender, truth, data, epoch), so a run's defenses in one process share it


def load_defender(run: RunDir, epoch: int | None = None, holdout: int | None = None, device: str | None = None,
                  batch_size: int | None = None):
    """The defender's view of a run, the truth kept apart, the run data and the epoch used.

    The last one loaded is kept: several defenses of one run in one process build the data, load the model and
    compute the features once (defenses never modify the Defender's model; repairs work on copies). It is named
    by the checkpoint itself (resolved epoch and file digest), so a run extended or trained again is loaded anew.
    """
    epoch = _epoch_to_defend(run, epoch)
    key = (str(run.path.resolve()), epoch, run.checkpoint_fingerprint(epoch), holdout, device, batch_size,
           run.manifest().git_commit)
    if _LAST.get("key") == key:
        return _LAST["value"]
    _LAST.clear()
    value = _load_defender(run, epoch, holdout, device, batch_size)
    _LAST.update(key=key, value=value)
    return value


def _load_defender(run: RunDir, epoch, holdout, device, batch_size):
    """Build the run's data, then give the defender copies of its pixels only (see :func:`_pixels`)."""
    from medbackdoor.data.views import ImageRows, SampleImages
    from medbackdoor.experiment import build_run_data
    from medbackdoor.train.loop import pick_device

    config = run.config()
    have = run.checkpoint_epochs()
    if not have:
        raise UserError(f"{run.path} has no checkpoint to defend")
    epoch = have[-1] if epoch is None else epoch
    if epoch not in have:
        raise UserError(f"{run.path} has no checkpoint for epoch {epoch}; available: {have}")
    if holdout is not None and holdout < 2:
        raise UserError(f"--holdout must be at least 2, got {holdout}")
    dev = pick_device(device or config.train.device)
    data = build_run_data(config, progress=False)
    model = run.load_model(epoch, dev, config)
    n_hold = min(len(data.val), holdout or DEFAULT_HOLDOUT)
    val = data.val
    hold_rows = val.indices[:n_hold]
    defender = Defender(
        model=model,
        train_images=_pixels(SampleImages(data.train), config),
        train_labels=data.train.labels_array(),
        holdout_images=_pixels(ImageRows(data.images, hold_rows), config),
        holdout_labels=val.labels[hold_rows].astype(np.float32),
        label_names=list(data.dataset.label_names),
        device=dev,
        batch_size=batch_size or config.eval.batch_size,
        seed=config.train.seed,
        dataset=config.dataset.name,
    )
    return defender, _truth(run, data, config), data, epoch


def _truth(run: RunDir, data, config) -> Truth:
    """The truth a defense is scored against: the run's attack record (``RUN/attack.npz``, written when the run was
    made), or, for a run made before runs recorded it, the same record computed from the rebuilt data."""
    from medbackdoor.experiment import attack_record

    record = run.attack() or attack_record(data, config)
    if len(record["poisoned"]) != len(data.train):
        raise UserError(f"{run.attack_path} records {len(record['poisoned'])} training samples, the run's data has "
                        f"{len(data.train)}: the data changed since the run was made")
    mask = record["trigger_mask"]
    return Truth(poisoned=record["poisoned"], target=int(record["target"]), trigger_mask=mask if mask.size else None,
                 trigger_mask_reason=str(record["trigger_mask_reason"]))


def _pixels(view, config) -> Images:
    """A view's images copied into one pixel memmap (a nameless file in the image cache folder), as :class:`Images`.

    The training set as trained is read through the poisoning wrapper, which knows the trigger, the target and
    the poisoned samples; the copy holds the pixels alone, so the defender cannot reach any of them.
    """
    from medbackdoor.data.cache import default_cache_dir
    from medbackdoor.data.views import materialise

    folder = Path(config.cache_dir) if config.cache_dir is not None else default_cache_dir()
    return Images(materialise(view, folder))


def defend(run_dir: str | Path, method: str, epoch: int | None = None, holdout: int | None = None,
           options: dict | None = None, force: bool = False, device: str | None = None,
           require_data: bool = False, name: str | None = None) -> DefenseSummary:
    """Run ``method`` on the run in ``run_dir``; returns the summary (also written to ``summary.json``).

    ``require_data``: refuse any defense that is not a data defense (``--retrain`` needs flags per sample).
    ``name``: the output folder under ``RUN/defenses/`` (default: the method), e.g. to keep two option sets.
    A summary on disk is reused when it answers the same request: method and its ``revision`` (raised when the
    algorithm's answer changes), options (as given and as resolved with the defaults of the code that runs now, so a
    changed default is computed again), holdout, and the checkpoint
    (its epoch and file digest, :meth:`RunDir.checkpoint_fingerprint`). Anything else empties the folder first.
    """
    run = RunDir(run_dir)
    if not run.exists():
        raise UserError(f"{run.path} is not a run folder (no config.yaml)")
    options = dict(options or {})
    defense = create_defense(method, options)  # a bad method or option fails before any work
    if require_data and defense.kind != "data":
        raise UserError(f"--retrain needs a data defense; {method} is a {defense.kind} defense")
    name = name or method
    out = run.defense_dir(name)
    used_epoch = _epoch_to_defend(run, epoch)
    key = {"method": method, "revision": defense.revision, "options": options,
           "resolved": json.loads(json.dumps(defense.options(), default=str)), "epoch": used_epoch,
           "checkpoint": run.checkpoint_fingerprint(used_epoch), "holdout": holdout}
    done = _reusable(run, name, key) if not force else None
    if done is not None:
        return done
    defender, truth, data, used_epoch = load_defender(run, used_epoch, holdout, device)
    _clear(out, keep=TRAINED if getattr(defense, "trains", False) else None)  # stale: another request's outputs
    config = run.config()
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    kind_runner = {"data": _data, "input": _input, "model": _model, "mitigation": _mitigation}[defense.kind]
    rows, extra = kind_runner(defense, defender, truth, data, out, config)
    seconds = round(time.perf_counter() - t0, 3)
    summary = DefenseSummary(
        name=name, method=method, kind=defense.kind, run=str(run.path), epoch=used_epoch,
        holdout=len(defender.holdout_images), request=key, paper=defense.paper, changes=defense.changes,
        options=defense.options(),
        metric_columns={c.name: c.label for c in metric_columns(config.eval, data.test.condition is not None)},
        seconds=seconds, ms_per_image=round(1000 * seconds / max(extra.get("images_scored", 1), 1), 3), **extra)
    write_rows(run.defense_scores_path(name), rows)
    write_summary(run.defense_summary_path(name), summary)
    return summary


TRAINED = "run"  # the run folder a training-time defense (abl) trains, under RUN/defenses/NAME/


def _clear(out: Path, keep: str | None = None) -> None:
    """Empty a defense folder (scores, figures, a retrain of another request), except ``keep``: a training-time
    defense's run, which resumes where a stopped call left it (and is trained anew if its config changed)."""
    if keep is None or not out.is_dir():
        shutil.rmtree(out, ignore_errors=True)
        return
    for child in out.iterdir():
        if child.name != keep:
            shutil.rmtree(child) if child.is_dir() else child.unlink()


def _epoch_to_defend(run: RunDir, epoch: int | None) -> int:
    """The checkpoint a defense uses: ``epoch``, or the last one (one line when there is none)."""
    if not run.checkpoint_epochs():
        raise UserError(f"{run.path} has no checkpoint to defend")
    return run.resolve_epoch(epoch)


def _reusable(run: RunDir, name: str, key: dict) -> DefenseSummary | None:
    """The summary on disk of defense ``name`` when it answered request ``key`` and its scores are there."""
    path = run.defense_summary_path(name)
    if not path.is_file() or not run.defense_scores_path(name).is_file():
        return None
    done = read_summary(path)
    return done if done.request == key else None


def retrain(run_dir: str | Path, name: str, summary: DefenseSummary, progress: bool = True) -> dict:
    """Cleanse and retrain: drop what the data defense flagged and train the run's own config again.

    The new run goes to ``RUN/defenses/NAME/retrain`` (an ordinary run folder, resumable) with ``train.drop``
    naming the flagged positions; returns its last-epoch metrics beside the original run's, in the run's metric
    columns (:func:`~medbackdoor.metrics.metric_columns` of its ``eval`` settings).
    """
    from medbackdoor.config import load_config
    from medbackdoor.train import run as train_run

    run = RunDir(run_dir)
    flagged = summary.flagged_positions
    drop = run.retrain_drop_path(name)
    text = f"# {len(flagged)} training samples flagged by {summary.method} ({name})\n"
    text += "".join(f"{i}\n" for i in flagged)
    if not drop.is_file() or drop.read_text() != text:
        with atomic_path(drop, suffix=".txt") as tmp:
            tmp.write_text(text)
    config = load_config(run.config_path, [f"train.drop={drop.resolve()}"])
    new = run.retrain_dir(name)
    train_run(config, new.path, resume=True, progress=progress)
    before, after = run.metrics()[-1], new.metrics()[-1]
    names = [c.name for c in metric_columns(config.eval) if c.name in before and c.name in after]
    names += [c.name for c in metric_columns(config.eval, True)
              if c.group == "off" and c.name in before and c.name in after]
    result = {"run": str(new.path), "dropped": len(flagged),
              "before": {k: float(before[k]) for k in names}, "after": {k: float(after[k]) for k in names}}
    summary.retrain = result
    write_summary(run.defense_summary_path(name), summary)
    return result


# --- one function per kind: run the defense, then score it ---------------------------------------------------------

def _data(defense, d: Defender, truth: Truth, data, out: Path, config: RunConfig):
    det = defense.suspicion(d)
    scores, flagged = np.asarray(det.scores, np.float64), np.asarray(det.flagged, bool)
    if len(scores) != len(truth.poisoned) or len(flagged) != len(scores):
        raise RuntimeError(f"{defense.kind} defense returned {len(scores)} scores for {len(truth.poisoned)} samples")
    base_rows = data.train.base.indices[data.train.sample_positions()]
    rows = [{"sample": i, "dataset_row": int(base_rows[i]), "score": float(scores[i]), "flagged": bool(flagged[i]),
             "poisoned": bool(truth.poisoned[i]), **{k: v[i] for k, v in det.columns.items()}}
            for i in range(len(scores))]
    summary = {"detection": detection_summary(truth.poisoned, scores, flagged), "info": det.info,
               "images_scored": len(scores), "flagged_positions": np.flatnonzero(flagged).tolist()}
    _roc_figure(out / "roc.png", truth.poisoned, scores, f"{defense.kind} defense: poisoned training samples")
    return rows, summary


def _input(defense, d: Defender, truth: Truth, data, out: Path, config: RunConfig):
    if not data.trigger.changes_pixels:
        raise UserError("this run's trigger changes no pixel (a label-only attack): an input defense has "
                        "nothing to detect")
    threshold = defense.calibrate(d)
    clean = defense.score(d, Images.of(data.test.clean))
    triggered = defense.score(d, Images.of(data.test.triggered))
    rows, y, s = [], [], []
    for name, scores in (("clean", clean), ("triggered", triggered)):
        flags = defense.flag(scores)
        for i, (score, flag) in enumerate(zip(scores, flags)):
            rows.append({"set": name, "test_row": int(data.test.rows[i]), "score": float(score), "flagged": bool(flag)})
        y.append(np.full(len(scores), name == "triggered"))
        s.append(scores)
    y, s = np.concatenate(y), np.concatenate(s)
    flagged = np.array([r["flagged"] for r in rows])
    det = detection_summary(y, s, flagged)
    survived = np.asarray(data.test.survived, bool)
    if not survived.all():  # images the trigger did not change are clean in fact: score those that changed
        keep = np.r_[np.ones(len(clean), bool), survived]
        det["survived_only"] = detection_summary(y[keep], s[keep], flagged[keep])
    _roc_figure(out / "roc.png", y, s, f"{defense.kind} defense: triggered test images")
    return rows, {"detection": det, "threshold": threshold, "calibration": defense.calibration_rule,
                  "calibration_images": defense.calibrated_on, "images_scored": len(s),
                  "info": getattr(defense, "info", None) or None}


def _model(defense, d: Defender, truth: Truth, data, out: Path, config: RunConfig):
    scan = defense.scan(d)
    scores = np.asarray(scan.scores, np.float64)
    order = np.argsort(-scores, kind="stable")
    rank = int(np.flatnonzero(order == truth.target)[0]) + 1 if len(scores) else None
    rows = [{"label": name, "score": float(scores[i]), "flagged": bool(scan.flagged[i]),
             "target": i == truth.target} for i, name in enumerate(d.label_names)]
    summary = {"backdoored_verdict": scan.backdoored, "flagged_labels": [d.label_names[i] for i in
                                                                       np.flatnonzero(scan.flagged)],
               "target": d.label_names[truth.target], "target_rank": rank,
               "target_flagged": bool(scan.flagged[truth.target]), "poisoned_run": bool(truth.poisoned.any()),
               "info": {k: v for k, v in scan.info.items() if k != "masks" and k != "patterns"},
               "images_scored": len(d.holdout_images)}
    masks = scan.info.get("masks")
    if masks is not None:
        summary["reversed_trigger"] = _reversed(out, masks, scan.info.get("patterns"), truth, d.label_names)
    return rows, summary


def _mitigation(defense, d: Defender, truth: Truth, data, out: Path, config: RunConfig):
    if getattr(defense, "trains", False):
        return _training(defense, d, truth, data, out, config)
    before = _metrics(d.model, d, data, lambda x: x, config)
    repaired = defense.repair(d)
    model = repaired if repaired is not None else d.model
    after = _metrics(model, d, data, lambda x: defense.purify(d, x), config)
    rows = [{"when": when, **{k: v for k, v in m.items()}} for when, m in (("before", before), ("after", after))]
    return rows, {"before": before, "after": after, "images_scored": 2 * len(data.test),
                  "info": getattr(defense, "info", {})}


def _training(defense, d: Defender, truth: Truth, data, out: Path, config: RunConfig):
    """A training-time defense (``abl``): train the run's config with the defense's overrides into
    ``out/run`` (resumed if it is there with the same config), then score its last epoch against the run's
    checkpoint and its isolation against the truth."""
    from medbackdoor.config import config_diff, config_from_data
    from medbackdoor.experiment import read_positions
    from medbackdoor.train import run as train_run
    from medbackdoor.train.abl import ISOLATED, LOSSES

    new_config = config_from_data(config.to_dict(), defense.overrides(config.train.epochs))
    new = RunDir(out / TRAINED)
    if new.exists() and config_diff(new.config(), new_config) is not None:
        shutil.rmtree(new.path)
    train_run(new_config, new.path, resume=True, progress=False)
    last = new.checkpoint_epochs()[-1]
    model = new.load_model(last, d.device, new_config)
    before = _metrics(d.model, d, data, lambda x: x, config)
    after = _metrics(model, d, data, lambda x: x, config)
    losses = np.load(new.path / LOSSES, allow_pickle=False)
    isolated = read_positions(str(new.path / ISOLATED))
    if len(losses) != len(truth.poisoned):
        raise RuntimeError(f"{defense.kind} defense isolated among {len(losses)} samples, the run has "
                           f"{len(truth.poisoned)}")
    flagged = np.zeros(len(losses), bool)
    flagged[isolated] = True
    rows = [{"when": when, **m} for when, m in (("before", before), ("after", after))]
    info = {"run": str(new.path), "epochs": new_config.train.epochs, "isolated": int(flagged.sum()),
            "poisoned_isolated": int((flagged & truth.poisoned).sum())}
    return rows, {"before": before, "after": after, "images_scored": 2 * len(data.test) + len(losses),
                  "detection": detection_summary(truth.poisoned, -losses, flagged),
                  "flagged_positions": isolated.tolist(), "info": info}


def _metrics(model, d: Defender, data, transform, config: RunConfig) -> dict:
    """The run's metric columns (:func:`~medbackdoor.metrics.metric_columns` of its ``eval`` settings: ASR at
    each p, strict or not, AUROC-TT/NN/TN, mixed ε) of ``model`` on the test set, inputs passed through
    ``transform``."""
    from medbackdoor.train.loop import predict

    def scores(view):
        out = []
        for lo in range(0, len(view), 256):
            out.append(predict(model, transform(np.asarray(view[lo : lo + 256])), d.device, d.batch_size))
        return np.concatenate(out)

    clean = scores(data.test.clean)
    triggered = clean if data.test.triggered is data.test.clean else scores(data.test.triggered)
    m = score_columns(config.eval, data.test.labels, clean, triggered, data.target, config.attack_seed,
                      config.trigger.label, data.test.carriers, data.test.condition)
    return column_values(metric_columns(config.eval, data.test.condition is not None), m)


def _reversed(out: Path, masks, patterns, truth: Truth, names) -> dict:
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
    _mask_figure(out / "reversed_triggers.png", masks, names)
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
