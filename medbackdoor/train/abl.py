"""``train.abl``: Anti-Backdoor Learning's three stages inside an ordinary run (Li et al., NeurIPS 2021).

Epochs ``1 … isolation_epochs`` train on the whole training set (as trained) with the local gradient ascent
(LGA) loss ``sign(L − γ)·L``: a batch whose loss has fallen below ``γ`` is pushed back up, so the samples that
are learned fastest (a backdoor is) stand out. Before the next epoch the run scores every training sample and
isolates the ``isolation_ratio`` share with the lowest loss (written to ``RUN/abl_isolated.txt``, so a resumed
run isolates exactly what an unstopped one did). The middle epochs train normally on the rest; the last
``unlearn_epochs`` epochs ascend the loss on the isolated samples alone at ``unlearn_lr``.

Multi-label: a sample's loss, for isolation and for comparing a batch with ``γ``, is the BCE *summed* over its
known findings: the negative log-likelihood of its label vector, as cross-entropy is of a class, so ``γ = 0.5``
(the paper's) keeps its meaning, a label vector predicted with likelihood about e^−0.5 ≈ 0.61. The step itself
follows the run's own loss (mean BCE, class weights if the run uses them) times that sign, so Adam's steps are
those of the run's training. As in the authors' code, the sign is taken per batch (the batch's mean loss against
``γ``).

Single-label (a ``task`` that is multi-class or binary): the paper's own form. A sample's loss is the
cross-entropy of its class (``−log p_y`` from the softmax), the step's loss the run's cross-entropy; a sample whose
class is unknown (a NaN row) is never isolated.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch.utils.data import Subset

from medbackdoor._io import atomic_path, read_positions
from medbackdoor.config import AblConfig, TrainConfig
from medbackdoor.inference import predict
from medbackdoor.losses import label_nll
from medbackdoor.train.loop import bce_loss, make_loader


def stage(epoch: int, abl: AblConfig, epochs: int) -> str:
    """``isolate``, ``train`` or ``unlearn``: what epoch ``epoch`` of ``epochs`` does."""
    if epoch <= abl.isolation_epochs:
        return "isolate"
    return "unlearn" if epoch > epochs - abl.unlearn_epochs else "train"


def _single(task) -> bool:
    return task is not None and task.single_label


def lga_loss(gamma: float, task=None):
    """The LGA loss: the run's loss times ``sign(batch NLL − γ)`` (``task``: a single-label
    :class:`~medbackdoor.task.Task` makes both the cross-entropy; None or multi-label: BCE and summed BCE)."""

    def loss(logits: torch.Tensor, targets: torch.Tensor, weights=None) -> torch.Tensor:
        if _single(task):
            base = task.train_loss(logits, targets, weights)
            nll = task.train_loss(logits, targets)
        else:
            base, nll = bce_loss(logits, targets, weights), label_nll(logits, targets)
        return torch.sign(nll.detach() - gamma) * base

    return loss


def ascent_loss(logits: torch.Tensor, targets: torch.Tensor, weights=None, task=None) -> torch.Tensor:
    """Unlearning: minus the run's loss (``task``'s cross-entropy when single-label, else BCE)."""
    if _single(task):
        return -task.train_loss(logits, targets, weights)
    return -bce_loss(logits, targets, weights)


def sample_nll(scores: np.ndarray, labels: np.ndarray, task=None) -> np.ndarray:
    """Per sample, the BCE summed over its known findings, from sigmoid scores; for a single-label ``task``, the
    cross-entropy ``−log p_y`` of its class from softmax scores (``inf`` where the class is unknown)."""
    if _single(task):
        y = np.asarray(labels, np.float64)
        known = ~np.isnan(y).any(1)
        p = np.clip(np.asarray(scores, np.float64), 1e-12, 1.0)
        cls = np.nan_to_num(y).argmax(1)
        return np.where(known, -np.log(p[np.arange(len(p)), cls]), np.inf)
    p = np.clip(np.asarray(scores, np.float64), 1e-7, 1 - 1e-7)
    y = np.asarray(labels, np.float64)
    known = ~np.isnan(y)
    y = np.where(known, y, 0.0)
    per = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    return (per * known).sum(1)


def isolate(losses: np.ndarray, ratio: float) -> np.ndarray:
    """The positions of the ``ceil(ratio·N)`` lowest losses (ties by position), sorted."""
    k = max(1, math.ceil(ratio * len(losses)))
    return np.sort(np.argsort(losses, kind="stable")[:k])


def epoch_plan(epoch: int, abl: AblConfig, epochs: int, n: int, isolated, task=None
               ) -> tuple[str, np.ndarray | None, object]:
    """What epoch ``epoch`` of ``epochs`` trains on and with which loss: ``(stage, positions, loss_fn)``.

    ``positions`` are the training positions of the epoch (None: all of them); ``loss_fn`` the step's loss
    (None: the run's own loss). ``isolated()`` gives the isolated positions (called from the first epoch after the
    isolation epochs on). ``task``: the run's :class:`~medbackdoor.task.Task` (None: multi-label).
    """
    what = stage(epoch, abl, epochs)
    if what == "isolate":
        return what, None, lga_loss(abl.gamma, task)
    chosen = isolated()
    if what == "unlearn":
        return what, chosen, functools.partial(ascent_loss, task=task)
    return what, np.setdiff1d(np.arange(n), chosen), None


def isolated_positions(t, abl: AblConfig) -> np.ndarray:
    """The isolated positions of run ``t`` (a :class:`~medbackdoor.train.runner.Training`): read from the run
    folder, or computed now from the model (after the isolation epochs) and written there."""
    from medbackdoor.data.views import SampleImages

    path = t.out.abl_isolated_path
    if not path.is_file():
        scores = predict(t.model, SampleImages(t.data.train), t.device, t.config.eval.batch_size, t.dist,
                         task=t.task)
        losses = sample_nll(scores, t.data.train.labels_array(), t.task)
        chosen = isolate(losses, abl.isolation_ratio)
        if t.dist.is_main:
            text = (f"# {len(chosen)} of {len(losses)} training samples isolated by ABL (lowest summed BCE after "
                    f"{abl.isolation_epochs} LGA epochs, gamma {abl.gamma})\n" + "".join(f"{i}\n" for i in chosen))
            with atomic_path(t.out.abl_losses_path, suffix=".npy") as tmp, open(tmp, "wb") as f:
                np.save(f, losses.astype(np.float64))
            with atomic_path(path, suffix=".txt") as tmp:
                tmp.write_text(text)
        t.dist.barrier()
    return read_positions(str(path))


def prepare_epoch(t, epoch: int) -> str:
    """Set run ``t``'s loader, loss and (unlearning) learning rate for ``epoch``; returns the stage."""
    from medbackdoor.train.dist import EpochSampler

    abl, tc = t.config.train.abl, t.config.train
    what, keep, t.loss_fn = epoch_plan(epoch, abl, tc.epochs, len(t.data.train), lambda: isolated_positions(t, abl),
                                       t.task)
    if keep is None:
        return what
    subset = Subset(t.data.train, keep.tolist())
    sampler = EpochSampler(len(subset), tc.seed, t.dist)
    t.loader = make_loader(subset, tc.batch_size // t.dist.world, sampler, t.device, tc.workers)
    if what == "unlearn":
        for group in t.optimizer.param_groups:
            group["lr"] = abl.unlearn_lr
    return what


class ArraySamples(torch.utils.data.Dataset):
    """Samples ``{"image", "labels"}`` of an N×H×W uint8 image array (a memmap is read a sample at a time) and
    its N×C labels."""

    def __init__(self, images, labels: np.ndarray) -> None:
        self.images, self.labels = images, np.asarray(labels, np.float32)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"image": np.asarray(self.images[i]), "labels": self.labels[i]}


def fit_abl(make_model, images, labels: np.ndarray, holdout: tuple, tc: TrainConfig, abl: AblConfig, device,
            task=None) -> tuple[torch.nn.Module, np.ndarray, np.ndarray]:
    """Train the model ``make_model()`` builds (after seeding torch with ``tc.seed``, as a run does) on ``images``
    and ``labels`` with ABL's stages (:func:`epoch_plan`) over ``tc.epochs`` epochs, Adam and the plateau schedule
    of a run (on the loss of the clean ``holdout`` images and labels), with ``task``'s loss (None: multi-label).

    Returns the model (eval mode), every sample's summed BCE when the isolation was made, and the isolated
    positions.
    """
    from medbackdoor.train.dist import EpochSampler
    from medbackdoor.train.loop import Step, class_weights, train_epoch

    torch.manual_seed(tc.seed)
    model = make_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=tc.lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=tc.lr_factor,
                                                           patience=tc.lr_patience)
    samples = ArraySamples(images, labels)
    if _single(task):
        weights = task.class_weights(samples.labels) if tc.class_weights else None
    else:
        weights = class_weights(samples.labels) if tc.class_weights else None
    made: dict[str, np.ndarray] = {}

    def isolated() -> np.ndarray:
        if "isolated" not in made:
            made["losses"] = sample_nll(predict(model, images, device, tc.batch_size, task=task), samples.labels,
                                        task)
            made["isolated"] = isolate(made["losses"], abl.isolation_ratio)
        return made["isolated"]

    for epoch in range(1, tc.epochs + 1):
        what, keep, loss_fn = epoch_plan(epoch, abl, tc.epochs, len(samples), isolated, task)
        subset = samples if keep is None else Subset(samples, keep.tolist())
        loader = make_loader(subset, tc.batch_size, EpochSampler(len(subset), tc.seed), device)
        if what == "unlearn":
            for group in optimizer.param_groups:
                group["lr"] = abl.unlearn_lr
        own = task.train_loss if _single(task) else None  # None: the step's default, BCE
        step = Step(model, optimizer, device, amp=tc.amp, weights=weights, augment=tc.augment,
                    loss_fn=loss_fn or own)
        train_epoch(step, loader, epoch)
        scores = predict(model, holdout[0], device, tc.batch_size, task=task)
        if _single(task):
            scheduler.step(float(task.val_loss(holdout[1], scores)))
        else:
            scheduler.step(float(sample_nll(scores, holdout[1]).mean() / max(holdout[1].shape[1], 1)))
    isolated()
    return model.eval(), made["losses"], made["isolated"]
