"""What the repair defenses share: the two halves of the clean holdout, scoring a model on them, its quality
(the task's :meth:`~medbackdoor.task.Task.repair_quality`: micro AUROC for multi-label, accuracy for single-label),
and the model's BatchNorm layers.

Every repair that learns from the holdout (fine-pruning, ANP, I-BAU, FT-SAM) splits it the same way: the first
half is what the method learns from (it ranks, masks or fine-tunes on it); the second half judges (its quality is
what a budget limits, and the before/after numbers in ``info``), so no budget is judged on the images that were
used to choose or to fine-tune.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medbackdoor.defenses.base import Defender
from medbackdoor.errors import UserError
from medbackdoor.losses import label_nll  # noqa: F401 - the repairs' loss (shared with ABL's training)
from medbackdoor.metrics.multilabel import micro_auroc_or_none  # noqa: F401 - the multi-label repair budget


def halves(d: Defender, who: str, minimum: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(learn images, learn labels, judge images, judge labels): the holdout's first and second half.

    One line (``UserError``) when the holdout is smaller than ``minimum`` or the judging half has no positive
    and negative finding to compute an AUROC on.
    """
    n = len(d.holdout_images)
    if n < minimum:
        raise UserError(f"{who} needs at least {minimum} holdout images, got {n}")
    half = n // 2
    learn_x, learn_y = np.asarray(d.holdout_images[0:half]), d.holdout_labels[:half]
    judge_x, judge_y = np.asarray(d.holdout_images[half:n]), d.holdout_labels[half:n]
    if d.task.repair_quality(judge_y, np.nan_to_num(judge_y)) is None:  # the labels as their own scores
        raise UserError(f"{who} needs positive and negative findings in the second half of the holdout")
    return learn_x, learn_y, judge_x, judge_y


def as_input(images: np.ndarray, d: Defender) -> torch.Tensor:
    """N×H×W or N×C×H×W uint8 (or float in [0, 1]) images → N×C×H×W float on the defender's device."""
    from medbackdoor.inference import with_channels

    x = torch.from_numpy(np.ascontiguousarray(images))
    return with_channels((x.float() / 255.0 if x.dtype == torch.uint8 else x.float()).to(d.device))


def model_scores(model: nn.Module, images: np.ndarray, d: Defender) -> np.ndarray:
    """The task's scores N×C of ``model`` (as it is: eval or train mode is the caller's) on ``images``."""
    with torch.no_grad():
        out = [d.task.activation(model(as_input(images[lo : lo + d.batch_size], d)).float()).cpu().numpy()
               for lo in range(0, len(images), d.batch_size)]
    return np.concatenate(out) if out else np.zeros((0, len(d.label_names)), np.float32)


def label_tensor(labels: np.ndarray, d: Defender) -> torch.Tensor:
    return torch.from_numpy(np.asarray(labels, np.float32)).to(d.device)


def bce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean BCE over the known findings (NaN labels left out)."""
    known = ~torch.isnan(y)
    return F.binary_cross_entropy_with_logits(logits.float()[known], y[known])


def second_order():
    """A context in which second derivatives work through every layer: attention runs its plain (math) kernel,
    since the fused scaled-dot-product kernels have no double backward (a vision transformer under I-BAU's
    implicit hypergradient)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` in place of the submodule ``name`` of ``model``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def seeded(d: Defender, stream: int) -> torch.Generator:
    """A CPU generator for the defense's random choices, from the defender's seed and a stream number."""
    return torch.Generator().manual_seed(int(d.rng(stream).integers(2**62)))


def minibatches(n: int, batch_size: int, gen: torch.Generator):
    """One epoch of sorted index batches in a random order drawn from ``gen``."""
    order = torch.randperm(n, generator=gen).numpy()
    for lo in range(0, n, batch_size):
        yield np.sort(order[lo : lo + batch_size])
