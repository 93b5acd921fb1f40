"""``ft-sam``: fine-tune the model on clean data with sharpness-aware minimisation.

Zhu, Wei, Zha, Wu and Wu, "Enhancing Fine-Tuning Based Backdoor Defense with Sharpness-Aware Minimization",
ICCV 2023.

Plain fine-tuning on a little clean data rarely moves a backdoored model far enough from its backdoor: the
clean loss is already low where it is. SAM minimises the loss at the worst nearby weights (within radius
``rho``), and its adaptive form (ASAM: the radius scaled by each weight's magnitude) pushes hardest on the
large-norm neurons that a backdoor tends to run through. Each step: the gradient ``g`` at the weights ``w``, the
ascent ``e = rho · w² · g / ‖ |w| · g ‖`` (adaptive; ``rho · g / ‖g‖`` without), the gradient at ``w + e``, and
an SGD step (momentum 0.9, weight decay 5e-4) from ``w`` with it; the learning rate follows a cosine schedule
over the steps.

Multi-label changes: the loss is the BCE summed over the 14 findings (the label vector's negative log-likelihood,
in place of the label-smoothed cross-entropy); fine-tuning uses the holdout's first half, and the second half gives
the before/after micro AUROC in ``info``. BackdoorBench's FT-SAM restarts its cosine every 100 batches over 100
epochs of 5% of CIFAR; here the cosine runs once over ``epochs``.

BatchNorm (``statistics``): every parameter is fine-tuned, BatchNorm's scale and shift included. By default
(``batch``) the model fine-tunes in training mode: each batch is normalised with its own statistics, and the
running statistics move once per step (with the layer's momentum, on the pass at ``w``; the pass at ``w + e``
leaves them), so the repaired model's running statistics partly come from the holdout's first half.
``running`` fine-tunes in eval mode: the running statistics normalise and stay as they were.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import nn

from medbackdoor.defenses._holdout import (
    as_input,
    halves,
    label_nll,
    label_tensor,
    minibatches,
    model_scores,
    seeded,
)
from medbackdoor.defenses.base import DEFENSES, Defender, Mitigation, one_of
from medbackdoor.errors import UserError


@DEFENSES.register("ft-sam")
class FTSAM(Mitigation):
    """FT-SAM (Zhu et al., ICCV 2023): fine-tuning on the clean holdout with (adaptive) sharpness-aware minimisation.

    Args:
        rho: the SAM radius (BackdoorBench: 2.0 on CIFAR-10, adaptive).
        adaptive: ASAM's weight-scaled radius (the default, as in BackdoorBench) or plain SAM.
        epochs: passes over the holdout's first half.
        lr: the SGD learning rate at the start of the cosine (BackdoorBench: 0.01).
        batch_size: images per step.
        statistics: BatchNorm while fine-tuning: ``batch`` (the default: training mode, batch statistics, running
            statistics updated once per step) or ``running`` (eval mode: running statistics used and kept). The
            scale and shift are fine-tuned under both (see the module docstring).
    """

    paper = "Zhu et al. 2023, Enhancing Fine-Tuning Based Backdoor Defense with Sharpness-Aware Minimization"
    changes = ("the BCE summed over the 14 findings instead of label-smoothed cross-entropy; fine-tuned on the "
               "holdout's first half, BatchNorm in training mode (batch statistics; running statistics updated "
               "once per step, scale and shift fine-tuned; statistics: running keeps eval mode); one cosine over "
               "the epochs")

    def __init__(self, rho: float = 2.0, adaptive: bool = True, epochs: int = 20, lr: float = 0.01,
                 batch_size: int = 32, statistics: str = "batch") -> None:
        one_of("ft-sam", "statistics", statistics, ("batch", "running"))
        self.statistics = statistics
        for ok, message in [(rho > 0, f"ft-sam rho must be positive, got {rho}"),
                            (epochs >= 1, f"ft-sam epochs must be at least 1, got {epochs}"),
                            (lr > 0, f"ft-sam lr must be positive, got {lr}"),
                            (batch_size >= 1, f"ft-sam batch_size must be at least 1, got {batch_size}")]:
            if not ok:
                raise UserError(message)
        self.rho, self.adaptive, self.epochs, self.lr, self.batch_size = rho, bool(adaptive), epochs, lr, batch_size
        self.info: dict = {}

    def repair(self, d: Defender) -> nn.Module:
        learn_x, learn_y, judge_x, judge_y = halves(d, "ft-sam")
        model = copy.deepcopy(d.model).eval()
        before = d.task.repair_quality(judge_y, model_scores(model, judge_x, d))
        params = [p for p in model.parameters()]
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.SGD(params, lr=self.lr, momentum=0.9, weight_decay=5e-4)
        steps = self.epochs * math.ceil(len(learn_x) / self.batch_size)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
        gen = seeded(d, 5001)
        y_all = label_tensor(learn_y, d)
        losses = []
        model.train(self.statistics == "batch")
        with torch.enable_grad():
            for _ in range(self.epochs):
                for idx in minibatches(len(learn_x), self.batch_size, gen):
                    x, y = as_input(learn_x[idx], d), y_all[idx]
                    losses.append(float(sam_step(model, params, opt, x, y, self.rho, self.adaptive, d.task.loss)))
                    schedule.step()
        for p in params:
            p.requires_grad_(False)
        model.eval()
        after = d.task.repair_quality(judge_y, model_scores(model, judge_x, d))
        self.info = {"steps": steps, "holdout_split": {"fine_tune": len(learn_x), "judge": len(judge_x)},
                     "holdout_auroc_before": before, "holdout_auroc_after": after,
                     "loss_first_epoch": float(np.mean(losses[: max(1, steps // self.epochs)])),
                     "loss_last_epoch": float(np.mean(losses[-max(1, steps // self.epochs):]))}
        return model


def sam_step(model: nn.Module, params: list[torch.Tensor], opt: torch.optim.Optimizer, x: torch.Tensor,
             y: torch.Tensor, rho: float, adaptive: bool, loss_fn=label_nll) -> torch.Tensor:
    """One SAM (or ASAM) step: ascend to ``w + e`` within radius ``rho``, take the gradient there, step from ``w``.
    Returns the loss at ``w`` (``loss_fn``: the task's negative log-likelihood). In train mode, BatchNorm's running
    statistics move on the first pass only."""
    loss = loss_fn(model(x), y)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    opt.zero_grad(set_to_none=True)
    loss.backward()
    with torch.no_grad():
        grads = [(p, p.grad) for p in params if p.grad is not None]
        scaled = [(p.abs() * g) if adaptive else g for p, g in grads]
        norm = torch.norm(torch.stack([s.norm(2) for s in scaled])) if scaled else torch.tensor(0.0)
        moves = []
        for (p, _), s in zip(grads, scaled):
            e = (p.abs() * s if adaptive else s) * (rho / (norm + 1e-12))
            p.add_(e)
            moves.append((p, e))
    opt.zero_grad(set_to_none=True)
    for m in norms:
        m.momentum = 0.0
    try:
        loss_fn(model(x), y).backward()
    finally:
        for m, momentum in zip(norms, saved):
            m.momentum = momentum
    with torch.no_grad():
        for p, e in moves:
            p.sub_(e)
    opt.step()
    return loss.detach()
