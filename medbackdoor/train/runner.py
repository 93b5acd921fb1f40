"""``medbackdoor run``: train one backdoored (or clean-control) model, evaluating every epoch.

A run folder holds ``config.yaml`` (resolved), ``metrics.csv`` (one row per epoch), ``predictions/epoch_NNN.npz``
(the format of ``medbackdoor metrics``), ``checkpoints/epoch_NNN.pt`` and ``manifest.json``. Every file is written
atomically, so a run killed at any moment resumes (``resume=True``) from its last completed epoch and ends with
the same numbers as one never stopped.
"""

from __future__ import annotations

import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

import medbackdoor
from medbackdoor._io import atomic_path
from medbackdoor.config import NEUTRAL_KEYS, RunConfig, config_diff
from medbackdoor.data.views import ImageRows, SampleImages
from medbackdoor.errors import UserError
from medbackdoor.experiment import RunData, attack_record, build_run_data
from medbackdoor.inference import predict, set_layout
from medbackdoor.loggers import open_loggers
from medbackdoor.manifest import Manifest
from medbackdoor.metrics import save_predictions, stealth
from medbackdoor.metrics.columns import MetricColumn, column_values, metric_columns, score_columns
from medbackdoor.models import check_input_channels, create_model
from medbackdoor.rundir import RunDir
from medbackdoor.train.dist import Dist, EpochSampler, setup, teardown
from medbackdoor.train.loop import (
    GraphedStep,
    Heartbeat,
    Step,
    deterministic,
    make_loader,
    train_epoch,
)

RESUME_IGNORES = NEUTRAL_KEYS | {"train.epochs"}  # a finished run can be extended with more epochs

@dataclass
class EpochNumbers:
    """One epoch's numbers: its backdoor metrics (:func:`~medbackdoor.metrics.score_columns`), its losses
    (``train_loss``, ``val_loss``, ``val_auroc``), the learning rate, the seconds it took and the training
    throughput."""

    epoch: int
    metrics: dict
    losses: dict
    lr: float
    seconds: float
    images_per_s: float


def metric_row(n: EpochNumbers, label_names: tuple[str, ...], columns: tuple[MetricColumn, ...]) -> dict:
    """Flatten one epoch's numbers into a CSV row (fixed column order); ``columns``: the run's backdoor metric
    columns (:func:`~medbackdoor.metrics.metric_columns` of its ``eval`` settings)."""
    m = n.metrics
    row = {"epoch": n.epoch, **{k: n.losses[k] for k in ("train_loss", "val_loss", "val_auroc")},
           **column_values(columns, m)}
    row["mean_auroc_clean"] = m["mean_auroc_clean"]
    row.update({f"auroc_{label}": v for label, v in zip(label_names, m["per_class_auroc_clean"])})
    row.update({"lr": n.lr, "seconds": n.seconds, "train_images_per_s": n.images_per_s})
    return row


def prepare_folder(out: RunDir, config: RunConfig, resume: bool, force: bool) -> int:
    """Check the run folder and return the first epoch to train (1 for a fresh run)."""
    if not out.exists():
        return 1
    if force:
        out.clear()
        return 1
    diff = config_diff(out.config(), config, ignore=RESUME_IGNORES)
    if diff:
        raise UserError(f"{out.path} holds a run with a different config: {diff}; use another --out or --force")
    done = out.last_complete_epoch()
    if out.status() == "complete" and done >= config.train.epochs:
        if resume:
            return config.train.epochs + 1  # nothing left to do
        raise UserError(f"{out.path} holds a completed run; use --force to start over")
    if not resume:
        raise UserError(f"{out.path} holds an unfinished run (epoch {done} done); use --resume or --force")
    return done + 1


def _git_commit() -> str | None:
    try:
        here = Path(medbackdoor.__file__).resolve().parent
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                              timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict:
    import torchvision
    return {"medbackdoor": medbackdoor.__version__, "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "numpy": np.__version__}


def save_checkpoint(path: Path, epoch: int, model, optimizer, scheduler) -> None:
    state = {"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "torch_rng": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(state, tmp)


def load_checkpoint(out: RunDir | dict, epoch: int, model, optimizer, scheduler) -> None:
    """Restore a run at ``epoch`` (``out`` may be the already loaded state); the model's weights first."""
    state = out if isinstance(out, dict) else out.load_state(epoch)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])


def run(config: RunConfig, out: str | Path, resume: bool = False, force: bool = False, progress: bool = True
        ) -> Manifest:
    """Train and evaluate one run into ``out``; returns the manifest.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every rank calls this: rank 0 checks and writes the folder, all ranks
    train their share and score their slice (see :mod:`medbackdoor.train.dist`).
    """
    dist, device = setup(config.train.device, config.train.backend)
    try:
        return _run(config, RunDir(out), resume, force, progress and dist.is_main, dist, device)
    finally:
        teardown(dist)


def _run(config: RunConfig, out: RunDir, resume: bool, force: bool, progress: bool, dist: Dist,
         device: torch.device) -> Manifest:
    if config.train.sync_bn and dist.enabled and device.type != "cuda":
        raise UserError("train.sync_bn needs CUDA devices (SyncBatchNorm has no CPU kernel); drop it for gloo on CPU")
    if config.train.cuda_graph and (dist.enabled or config.train.compile):
        raise UserError("train.cuda_graph runs on one process without train.compile (torch.compile has its own "
                        "CUDA graphs: mode reduce-overhead); drop one of them")
    if config.train.batch_size % dist.world:
        raise UserError(f"train.batch_size {config.train.batch_size} must be a multiple of the {dist.world} "
                        "processes (the global batch is split evenly)")
    start = _prepare(out, config, resume, force, dist)
    if start > config.train.epochs:
        return out.manifest()
    t0 = time.perf_counter()
    data = build_run_data(config, progress=progress)  # bad data fails here, before the folder holds anything
    manifest = Manifest()
    if dist.is_main:
        out.path.mkdir(parents=True, exist_ok=True)
        out.write_config(config)
        out.write_attack(attack_record(data, config))
        manifest = _manifest(config, data, out, dist, device)
        manifest.timings["data_seconds"] = round(time.perf_counter() - t0, 3)
        out.write_manifest(manifest)
    try:
        with deterministic(config.train.deterministic):
            _train(config, data, out, start, manifest, progress, dist, device)
    except BaseException as exc:
        if dist.is_main:
            manifest.fail(f"{type(exc).__name__}: {exc}", interrupted=isinstance(exc, KeyboardInterrupt))
            out.write_manifest(manifest)
        raise
    if dist.is_main:
        manifest.status = "complete"
        out.write_manifest(manifest)
    dist.barrier()
    return manifest if dist.is_main else out.manifest()


def _prepare(out: RunDir, config: RunConfig, resume: bool, force: bool, dist: Dist) -> int:
    """:func:`prepare_folder` on rank 0, its answer (or its error) on every rank."""
    answer: int | str = 0
    if dist.is_main:
        try:
            answer = prepare_folder(out, config, resume, force)
        except UserError as exc:
            answer = str(exc)
    answer = dist.broadcast(answer)
    if isinstance(answer, str):
        raise UserError(answer)
    return answer


def _manifest(config: RunConfig, data: RunData, out: RunDir, dist: Dist, device: torch.device) -> Manifest:
    previous = out.manifest()
    return Manifest(
        status="running",
        config=config.to_dict(),
        dataset={"name": data.dataset.name, "fingerprint": data.dataset.fingerprint(), **data.counts(),
                 "task": data.dataset.task_kind, "channels": int(getattr(data.dataset, "channels", 1))},
        target=data.dataset.label_names[data.target],
        labels=list(data.dataset.label_names),
        trigger=repr(data.trigger),
        seeds={"train": config.train.seed, "attack": config.attack_seed},
        trigger_survival=data.survival,
        poisoning=data.poisoning(),
        stealth=_stealth(data),
        versions=versions(),
        git_commit=_git_commit(),
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor()})",
        distributed=dist.describe(),
        torch_threads=torch.get_num_threads(),
        timings={"epochs": previous.timings.get("epochs", {})},
        pretrained=previous.pretrained or None,
        plugins=_plugins(config),
    )


def _plugins(config: RunConfig) -> dict | None:
    """Where the run's dataset, trigger and model come from, for those that are not built in."""
    from medbackdoor.data import DATASETS
    from medbackdoor.models import MODELS
    from medbackdoor.triggers import TRIGGERS

    chosen = {"dataset": (DATASETS, config.dataset.name), "trigger": (TRIGGERS, config.trigger.kind)}
    if not config.model.arch.startswith("timm:"):
        chosen["model"] = (MODELS, config.model.arch)
    found = {what: registry.origin(name) for what, (registry, name) in chosen.items() if not registry.is_builtin(name)}
    return found or None


STEALTH_IMAGES = 1000  # stealth is measured on the first test images (SSIM costs ~6 ms per 224-px image)


def _stealth(data: RunData) -> dict:
    """PSNR, SSIM and changed pixels between the clean and triggered test images (how visible the trigger is)."""
    k = min(len(data.test), STEALTH_IMAGES)
    return stealth(data.test.clean[0:k], np.asarray(data.test.triggered[0:k]))


def _train(config: RunConfig, data: RunData, out: RunDir, start: int, manifest: Manifest, progress: bool, dist: Dist,
           device: torch.device) -> None:
    tc = config.train
    torch.manual_seed(tc.seed)
    names = data.dataset.label_names
    # Resuming, every weight comes from the checkpoint: the pretrained source (an imagenet download, an xrv file)
    # is not needed again. Its weights are loaded before the optimizer exists (an xrv checkpoint swaps conv0).
    state = out.load_state(start - 1) if start > 1 else None
    model = create_model(config.model.arch, config.model.pretrained if state is None else "none", len(names),
                         label_names=names, image_size=config.image_size, options=config.model.options)
    check_input_channels(model, getattr(data.dataset, "channels", 1), config.model.arch)
    if state is not None:
        model.load_state_dict(state["model"])
    elif getattr(model, "pretrained_info", None):
        manifest.pretrained = model.pretrained_info
    model = set_layout(model.to(device), tc.channels_last)
    graphed = tc.cuda_graph and device.type == "cuda"  # like bf16, a CUDA-only speed option: ignored on the CPU
    optimizer = torch.optim.Adam(model.parameters(), lr=tc.lr, capturable=graphed)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=tc.lr_factor,
                                                           patience=tc.lr_patience)
    if state is not None:
        # the optimizer's capturable flag follows this run's device, not the checkpoint's (train.device may
        # change on resume): load_state_dict takes it from the saved groups and places Adam's step by it
        for group in state["optimizer"]["param_groups"]:
            group["capturable"] = graphed
        load_checkpoint(state, start - 1, model, optimizer, scheduler)
    step_model = _parallel(model, tc, dist, device)
    task = data.dataset.task
    weights = task.class_weights(data.train.labels_array()) if tc.class_weights else None
    graph = GraphedStep(model, optimizer, amp=tc.amp, weights=weights, loss=task.graph_loss) if graphed else None
    if dist.is_main:
        manifest.cuda_graph = graphed
    val_set = data.val_poisoned if tc.poisoned_val else data.val
    val_images = SampleImages(val_set) if tc.poisoned_val else ImageRows(data.images, data.val.indices)
    val_labels = val_set.labels_array()
    sampler = EpochSampler(len(data.train), tc.seed, dist)
    loader = make_loader(data.train, tc.batch_size // dist.world, sampler, device, tc.workers)
    rows = [r for r in out.metrics() if int(r["epoch"]) < start] if dist.is_main else []
    loggers = open_loggers(tc.log, out.logs_dir, config) if dist.is_main else []
    state = Training(config, data, out, manifest, dist, device, progress, model, step_model, optimizer, scheduler,
                     loader, weights, graph, val_images, val_labels, rows, loggers, task=task)
    try:
        for epoch in range(start, tc.epochs + 1):
            if tc.abl.enabled:
                from medbackdoor.train.abl import prepare_epoch

                prepare_epoch(state, epoch)
            _epoch(state, epoch)
    finally:
        for logger in loggers:
            logger.close()


def _parallel(model, tc, dist: Dist, device: torch.device):
    """The module the training step calls: ``model`` itself, or wrapped in SyncBatchNorm / DDP / torch.compile.

    Parameters are shared, so ``model`` (saved to checkpoints, used for scoring) always holds the trained weights.
    """
    step = model
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        if tc.sync_bn:
            step = torch.nn.SyncBatchNorm.convert_sync_batchnorm(step)
        step = DistributedDataParallel(step, device_ids=[device.index] if device.type == "cuda" else None)
    if tc.compile:
        step = torch.compile(step)
    return step


@dataclass
class Training:
    """What every epoch of one run works on: the run (config, data, folder, manifest, where it runs), the model
    and its optimisation, the clean validation set, and what the epochs have written so far (``rows``)."""

    config: RunConfig
    data: RunData
    out: RunDir
    manifest: Manifest
    dist: Dist
    device: torch.device
    progress: bool
    model: torch.nn.Module  # the weights (checkpoints and scoring use it)
    step_model: torch.nn.Module  # what a training step calls: ``model`` or a DDP / compiled wrapper of it
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau
    loader: object
    weights: torch.Tensor | None
    graph: GraphedStep | None
    val_images: object
    val_labels: np.ndarray
    rows: list[dict] = field(default_factory=list)
    loggers: list = field(default_factory=list)
    loss_fn: object = None  # the step's loss when not the task's (train.abl's stages)
    task: object = None  # the dataset's :class:`~medbackdoor.task.Task`


def _epoch(t: Training, epoch: int) -> None:
    """Train one epoch, score the validation and test sets, then write the epoch (rank 0)."""
    tc, dist = t.config.train, t.dist
    t0 = time.perf_counter()
    beat = Heartbeat(t.out.heartbeat_path if dist.is_main else None)  # a sweep watches it for progress
    with tqdm(total=len(t.loader.sampler) * dist.world, desc=f"epoch {epoch}/{tc.epochs}", unit="img", leave=False,
              disable=None if t.progress else True) as bar:
        step = Step(t.step_model, t.optimizer, t.device, amp=tc.amp, weights=t.weights, augment=tc.augment,
                    loss_fn=t.loss_fn or t.task.train_loss, graph=t.graph)
        train_loss = train_epoch(step, t.loader, epoch, dist, progress=bar, heartbeat=beat)
    train_seconds = time.perf_counter() - t0
    dist.sync_buffers(t.model)  # one set of BatchNorm statistics (rank 0's) for scoring on every rank
    val_scores, clean, triggered = _score(t, beat)
    val_loss = t.task.val_loss(t.val_labels, val_scores)
    t.scheduler.step(val_loss)
    if dist.is_main:
        losses = {"train_loss": train_loss, "val_loss": val_loss, "val_auroc": t.task.val_quality(t.val_labels,
                                                                                                   val_scores)}
        _write_epoch(t, epoch, losses, clean, triggered, t0, train_seconds)


def _score(t: Training, beat: Heartbeat) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The task's probabilities of the validation images and of the clean and triggered test images (always fp32,
    even when training used bf16)."""
    bs, test = t.config.eval.batch_size, t.data.test
    val_scores = predict(t.model, t.val_images, t.device, bs, t.dist, beat, t.task)
    clean = predict(t.model, test.clean, t.device, bs, t.dist, beat, t.task)
    same = test.triggered is test.clean  # a label-only trigger leaves the images as they are
    triggered = clean if same else predict(t.model, test.triggered, t.device, bs, t.dist, beat, t.task)
    return val_scores, clean, triggered


def _write_epoch(t: Training, epoch: int, losses: dict, clean: np.ndarray, triggered: np.ndarray, t0: float,
                 train_seconds: float) -> None:
    """Score the epoch's metrics and write it: predictions, checkpoint, metrics row, manifest, and only then prune
    the previous checkpoint. A kill between any two writes leaves the newest complete epoch (row + checkpoint) to
    resume from."""
    config, data, out = t.config, t.data, t.out
    m = score_columns(config.eval, data.test.labels, clean, triggered, data.target, config.attack_seed,
                      config.trigger.label, data.test.carriers, data.test.condition, t.task)
    extra = {"label": np.array(config.trigger.label), "label_names": np.array(data.dataset.label_names),
             "task": np.array(t.task.kind)}
    columns = metric_columns(config.eval, data.test.condition is not None, t.task)
    if data.test.carriers is not None:
        extra["carriers"] = data.test.carriers
    if data.test.condition is not None:
        extra["condition"] = data.test.condition
    save_predictions(out.predictions_path(epoch), data.test.labels, clean, triggered, data.target,
                     rows=data.test.rows, **extra)
    save_checkpoint(out.checkpoint_path(epoch), epoch, t.model, t.optimizer, t.scheduler)
    seconds = time.perf_counter() - t0
    numbers = EpochNumbers(epoch, m, losses, t.optimizer.param_groups[0]["lr"], round(seconds, 3),
                           round(len(data.train) / train_seconds, 2))
    row = metric_row(numbers, data.dataset.label_names, columns)
    t.rows.append(row)
    out.write_metrics(t.rows)
    t.manifest.timings.setdefault("epochs", {})[str(epoch)] = {"seconds": round(seconds, 3),
                                                               "train_seconds": round(train_seconds, 3)}
    t.manifest.epochs_done = epoch
    out.write_manifest(t.manifest)
    _prune_checkpoints(out, epoch, config.train.keep_checkpoints)
    for logger in t.loggers:
        logger.epoch(epoch, row)
    if t.progress:
        shown = " ".join(f"{c.label} {row[c.name]:.3f}" for c in columns if c.group != "mixed")
        print(f"epoch {epoch}: loss {losses['train_loss']:.4f} val {losses['val_loss']:.4f} | {shown} | "
              f"{seconds:.1f}s", flush=True)


def _prune_checkpoints(out: RunDir, epoch: int, keep: list[int] | None) -> None:
    """With ``keep`` set, drop every earlier checkpoint not asked for (the latest, ``epoch``, always stays).

    Called only after epoch ``epoch``'s checkpoint, metrics row and manifest are on disk.
    """
    if keep is None:
        return
    for old in out.checkpoint_epochs():
        if old < epoch and old not in keep:
            out.checkpoint_path(old).unlink(missing_ok=True)
