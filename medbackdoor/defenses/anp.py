"""``anp``: Adversarial Neuron Pruning: learn which BatchNorm neurons an adversarial perturbation exploits, prune them.

Wu and Wang, "Adversarial Neuron Pruning Purifies Backdoored Deep Models", NeurIPS 2021.

A backdoored network is fragile along its backdoor neurons: a small multiplicative perturbation of them makes the
model misbehave on clean data far more than the same perturbation of a clean network's neurons. ANP gives every
neuron (a channel of a BatchNorm layer) a mask ``m ∈ [0, 1]`` and two perturbations, ``δ`` on its scale and ``ξ``
on its shift, both in ``[−eps, eps]``: the layer computes ``γ·(m + δ)·x̂ + β·(1 + ξ)``. Each step first moves
``δ, ξ`` (from a random start) to *raise* the clean loss, then moves the masks to lower
``α·L(m) + (1 − α)·L(m, δ, ξ)``: the loss unperturbed and perturbed. Neurons whose masks sink are the ones the
perturbation uses; they are pruned (their BatchNorm scale set to 0, as the paper's code does).

Multi-label changes: the loss is the BCE summed over the 14 findings (the label vector's negative
log-likelihood, in place of softmax cross-entropy, whose scale the paper's step sizes were set for); the pruning
level is chosen by a budget, not a fixed threshold: neurons are pruned in increasing order of their masks
(the paper's pruning by number), ``levels`` levels up to ``max_fraction`` of them, and the last level whose clean
micro AUROC (all findings pooled, on the holdout's second half) stays within ``budget`` of the unpruned model's is
kept. The masks are learned on the holdout's first half. ``statistics: batch`` (the default, as in the paper's
code) normalises each BatchNorm layer by the batch while the masks are learned, without touching its running
statistics; ``running`` uses the running statistics (eval mode). How ``budget``, ``steps`` and ``statistics`` were
set: docs/results/defenses-tuning.md.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medbackdoor.defenses._holdout import (
    as_input,
    halves,
    label_tensor,
    minibatches,
    model_scores,
    replace_module,
    seeded,
)
from medbackdoor.defenses.base import DEFENSES, Defender, Mitigation, one_of
from medbackdoor.errors import UserError
from medbackdoor.models.info import norm_layers


class PerturbedNorm(nn.Module):
    """A normalisation layer (BatchNorm, its running statistics shared, in eval mode; or LayerNorm / GroupNorm)
    with a neuron mask and multiplicative perturbations of its scale and shift: ``γ·(mask + δ)·x̂ + β·(1 + ξ)``.
    A neuron is one entry of the layer's ``weight``: a BatchNorm or GroupNorm channel, a LayerNorm feature."""

    def __init__(self, bn: nn.Module) -> None:
        super().__init__()
        self.bn = bn
        c = bn.weight.numel()
        device = bn.weight.device
        self.mask = nn.Parameter(torch.ones(c, device=device))
        self.noise_weight = nn.Parameter(torch.zeros(c, device=device))
        self.noise_bias = nn.Parameter(torch.zeros(c, device=device))
        self.perturbed = False
        self.batch_statistics = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn = self.bn
        scale, shift = self.mask, torch.ones_like(self.mask)
        if self.perturbed:
            scale, shift = scale + self.noise_weight, shift + self.noise_bias
        weight, bias = bn.weight * scale.view_as(bn.weight), bn.bias * shift.view_as(bn.bias)
        if isinstance(bn, nn.LayerNorm):
            return F.layer_norm(x, bn.normalized_shape, weight, bias, bn.eps)
        if isinstance(bn, nn.GroupNorm):
            return F.group_norm(x, bn.num_groups, weight, bias, bn.eps)
        if self.batch_statistics:  # the paper's code: normalise by the batch, running statistics untouched
            return F.batch_norm(x, None, None, weight, bias, True, 0.0, bn.eps)
        return F.batch_norm(x, bn.running_mean, bn.running_var, weight, bias, False, 0.0,
                            bn.eps)


@DEFENSES.register("anp")
class ANP(Mitigation):
    """Adversarial Neuron Pruning (Wu & Wang, NeurIPS 2021), with a clean-AUROC pruning budget.

    Args:
        eps: bound of the multiplicative perturbations δ, ξ (the paper: 0.4).
        alpha: weight of the unperturbed loss in the mask objective (the paper: 0.2).
        steps: mask-optimisation steps (one batch each; the paper: 2,000 batches of 128 on 500 images; 100 here,
            so that a DenseNet-121 at 64 px fits the study's time budget on a 2-core CPU).
        perturb_steps: ascent steps on δ, ξ per mask step (the paper: 1, of size eps).
        lr: SGD (momentum 0.9) learning rate of the masks (the paper: 0.2).
        batch_size: holdout images per step.
        budget: the largest drop in the judging half's clean micro AUROC a pruning level may cost: the
            defender's tolerance, set a priori (not tuned) to the AUROC-NN drop the study allows a repair, 0.02.
            It is wider than fine-pruning's 0.01 because even the first level of BatchNorm neurons, pruned across
            the whole network, can cost more than that on the small judging half.
        max_fraction: the largest share of the neurons that may be pruned.
        statistics: ``batch`` (normalise by the batch while learning the masks, the paper's code) or ``running``.
        levels: pruning levels tried, evenly spaced in the number of neurons up to ``max_fraction`` (the paper's
            pruning by number: its recipe prunes 20 neurons more per level, up to 1,000).
    """

    paper = "Wu & Wang 2021, Adversarial Neuron Pruning Purifies Backdoored Deep Models"
    changes = ("the BCE summed over the 14 findings instead of cross-entropy; neurons pruned in mask order up to "
               "the last level within a clean micro-AUROC budget on the holdout's second half; masks learned on "
               "its first half")

    def __init__(self, eps: float = 0.4, alpha: float = 0.2, steps: int = 100, perturb_steps: int = 1,
                 lr: float = 0.2, batch_size: int = 32, budget: float = 0.02, max_fraction: float = 0.05,
                 levels: int = 50, statistics: str = "batch") -> None:
        one_of("anp", "statistics", statistics, ("running", "batch"))
        self.statistics = statistics
        checks = [(eps >= 0, f"anp eps must be 0 or more, got {eps}"),
                  (0 <= alpha <= 1, f"anp alpha must be in [0, 1], got {alpha}"),
                  (steps >= 1, f"anp steps must be at least 1, got {steps}"),
                  (perturb_steps >= 1, f"anp perturb_steps must be at least 1, got {perturb_steps}"),
                  (lr > 0, f"anp lr must be positive, got {lr}"),
                  (batch_size >= 1, f"anp batch_size must be at least 1, got {batch_size}"),
                  (0 <= budget < 1, f"anp budget must be in [0, 1), got {budget}"),
                  (0 < max_fraction < 1, f"anp max_fraction must be in (0, 1), got {max_fraction}"),
                  (levels >= 1, f"anp levels must be at least 1, got {levels}")]
        for ok, message in checks:
            if not ok:
                raise UserError(message)
        self.eps, self.alpha, self.steps, self.perturb_steps = eps, alpha, steps, perturb_steps
        self.lr, self.batch_size, self.budget = lr, batch_size, budget
        self.max_fraction, self.levels = max_fraction, levels
        self.info: dict = {}

    def repair(self, d: Defender) -> nn.Module:
        learn_x, learn_y, judge_x, judge_y = halves(d, "anp")
        model = copy.deepcopy(d.model).eval()
        layers = norm_layers(model, "anp")
        masks = self.learn_masks(model, layers, learn_x, learn_y, d)
        values = torch.cat([m.detach().cpu() for m in masks]).numpy()

        base = d.task.repair_quality(judge_y, model_scores(model, judge_x, d))
        order = np.argsort(values, kind="stable")  # lowest mask first
        where = np.concatenate([np.full(len(m), i) for i, m in enumerate(masks)]), np.concatenate(
            [np.arange(len(m)) for m in masks])
        originals = [bn.weight.detach().clone() for _, bn in layers]
        top = int(np.floor(self.max_fraction * len(values)))
        counts = sorted({int(round(c)) for c in np.linspace(0, top, self.levels + 1)[1:] if round(c) >= 1})
        kept, kept_auroc, tried = 0, base, []
        with torch.no_grad():
            for k in counts:
                _prune(layers, originals, where, order[:k])
                value = d.task.repair_quality(judge_y, model_scores(model, judge_x, d))
                tried.append({"pruned": k, "mask_below": float(values[order[k - 1]]), "auroc": value})
                if base - value > self.budget:
                    break
                kept, kept_auroc = k, value
            _prune(layers, originals, where, order[:kept])
        pruned = order[:kept]
        per_layer: dict[str, int] = {}
        for i in pruned:
            name = layers[where[0][i]][0]
            per_layer[name] = per_layer.get(name, 0) + 1
        self.info = {
            "neurons": int(len(values)), "layers": len(layers), "pruned": int(kept),
            "pruned_fraction": round(kept / len(values), 5),
            "mask_of_last_pruned": float(values[order[kept - 1]]) if kept else None,
            "pruned_per_layer": per_layer,
            "mask_quantiles": {str(q): float(np.quantile(values, q)) for q in (0.0, 0.01, 0.05, 0.5)},
            "levels": tried,
            "holdout_split": {"learn_masks": len(learn_x), "decide": len(judge_x)},
            "holdout_auroc_unpruned": base, "holdout_auroc_pruned": kept_auroc,
        }
        return model

    def learn_masks(self, model: nn.Module, layers, images: np.ndarray, labels: np.ndarray,
                    d: Defender) -> list[torch.Tensor]:
        """Optimise the neuron masks (one tensor per layer, in ``layers`` order) on the clean images."""
        wrapped = [PerturbedNorm(bn) for _, bn in layers]
        for w in wrapped:
            w.batch_statistics = self.statistics == "batch"
        for (name, _), w in zip(layers, wrapped):
            replace_module(model, name, w)
        frozen = [(p, p.requires_grad) for p in model.parameters()]
        for p, _ in frozen:
            p.requires_grad_(False)
        masks = [w.mask for w in wrapped]
        noises = [p for w in wrapped for p in (w.noise_weight, w.noise_bias)]
        for p in masks + noises:
            p.requires_grad_(True)
        mask_opt = torch.optim.SGD(masks, lr=self.lr, momentum=0.9)
        gen = seeded(d, 4001)
        y_all = label_tensor(labels, d)
        batches = iter(())
        try:
            with torch.enable_grad():
                for _ in range(self.steps):
                    idx = next(batches, None)
                    if idx is None:
                        batches = minibatches(len(images), self.batch_size, gen)
                        idx = next(batches)
                    x, y = as_input(images[idx], d), y_all[idx]
                    if self.eps > 0:  # δ, ξ from a uniform start, then ascent on the clean loss
                        with torch.no_grad():
                            for p in noises:
                                p.copy_((torch.rand(p.shape, generator=gen) * 2 - 1).mul_(self.eps))
                        _set(wrapped, True)
                        for _ in range(self.perturb_steps):  # signed ascent, projected on [−eps, eps]
                            grads = torch.autograd.grad(d.task.loss(model(x), y), noises)
                            with torch.no_grad():
                                for p, g in zip(noises, grads):
                                    p.add_(g.sign(), alpha=self.eps / self.perturb_steps).clamp_(-self.eps, self.eps)
                    mask_opt.zero_grad(set_to_none=True)
                    loss = 0.0
                    if self.eps > 0 and self.alpha < 1:
                        _set(wrapped, True)
                        loss = (1 - self.alpha) * d.task.loss(model(x), y)
                    _set(wrapped, False)
                    loss = loss + self.alpha * d.task.loss(model(x), y)
                    loss.backward()
                    mask_opt.step()
                    with torch.no_grad():
                        for m in masks:
                            m.clamp_(0, 1)
        finally:
            for name, bn in layers:
                replace_module(model, name, bn)
            for p, flag in frozen:
                p.requires_grad_(flag)
        return [m.detach() for m in masks]


def _set(wrapped, perturbed: bool) -> None:
    for w in wrapped:
        w.perturbed = perturbed


def _prune(layers, originals, where, neurons: np.ndarray) -> None:
    """Set the BatchNorm scale of ``neurons`` (indices into the concatenated masks; ``where`` maps them to
    (layer, channel)) to 0, every other scale as trained: the paper's pruning (the shift is kept)."""
    for (_, bn), weight in zip(layers, originals):
        bn.weight.copy_(weight)
    for i in neurons:
        layers[where[0][i]][1].weight.view(-1)[where[1][i]] = 0
