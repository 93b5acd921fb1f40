"""``fine-pruning``: prune the final feature channels that clean data leaves dormant, then fine-tune on clean data.

Liu, Dolan-Gavitt and Garg, "Fine-Pruning: Defending Against Backdooring Attacks on Deep Neural Networks",
RAID 2018.

A backdoor often runs through channels that clean inputs hardly use. The defense records the mean activation of
each channel of the final feature map (module ``layer``, default ``prune``: the layer the model's ``info`` names
for pruning; DenseNet-121's norm5 after its ReLU, 1,024 channels) on clean images, prunes channels in increasing
order of activation while the clean holdout's micro AUROC (all findings pooled) stays within ``budget`` of the
unpruned model's, keeps the last pruning level within budget, and then fine-tunes the pruned model with BCE on
clean images.

Pruning zeroes a channel with a fixed mask: the module ``layer`` of a copy of the model is replaced by
``Sequential(layer, ChannelMask)``, so the repaired model is an ordinary ``nn.Module`` of the same class (its
``forward_features`` and ``forward_head`` still work, and Grad-CAM's ``last`` layer sees the masked maps); the
defender's model is never changed.

The holdout is the only clean data the defender has, and it is split in two: the first half ranks the channels
(mean activations) and is the fine-tuning set; the second half decides how far to prune (its AUROC is what the
budget limits) and gives the before/after AUROC in ``info``, so the budget is not judged on the images that were
used to choose or to fine-tune.

When the model has ``forward_head`` and ``forward_head(layer output)`` reproduces its logits (DenseNet-121 with
its ``prune`` layer), the layer's output on the deciding half is computed once and every pruning level is scored
through the head only, one channel at a time; otherwise each level runs the whole model and levels advance by
1/64 of the channels.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import nn

from medbackdoor.defenses._holdout import as_input as _input
from medbackdoor.defenses._holdout import halves, minibatches, replace_module, seeded
from medbackdoor.defenses._holdout import model_scores as _scores
from medbackdoor.defenses.base import DEFENSES, Defender, Mitigation
from medbackdoor.errors import UserError
from medbackdoor.models.info import channel_axis, layer_name

SLOW_LEVELS = 64  # pruning levels tried when every level needs a full forward pass


class ChannelMask(nn.Module):
    """Multiplies the channel dimension ``axis`` of its input (1 for maps, −1 for tokens) by a fixed 0/1 mask (a
    buffer, saved with the model)."""

    def __init__(self, mask: torch.Tensor, axis: int = 1) -> None:
        super().__init__()
        self.axis = axis
        self.register_buffer("mask", mask.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = [1] * x.ndim
        shape[self.axis] = -1  # the C-vector laid along the channel dimension
        return x * self.mask.to(x.dtype).view(shape)


@DEFENSES.register("fine-pruning")
class FinePruning(Mitigation):
    """Fine-Pruning (Liu et al., RAID 2018): prune channels dormant on clean data, then fine-tune.

    Multi-label changes: the pruning budget is a drop in the clean holdout's micro AUROC (all 14 findings
    pooled) instead of top-1 accuracy, and fine-tuning uses per-finding BCE; the pruned layer is the final
    feature map (DenseNet-121's norm5 after its ReLU) instead of the last convolutional layer of a small CNN.

    Args:
        budget: the largest drop in clean holdout micro AUROC a pruning level may cost (the paper: 4 % accuracy).
        epochs: fine-tuning epochs over the first half of the holdout (0: prune only).
        lr: Adam learning rate of the fine-tuning.
        batch_size: images per fine-tuning step.
        layer: the module whose output channels are pruned: ``prune`` (the default), ``last`` or ``middle``
            for the layers the model's ``info`` declares (DenseNet-121: ``prune`` and ``last`` are both ``relu``,
            the final feature map), or a module name.
    """

    paper = "Liu et al. 2018, Fine-Pruning: Defending Against Backdooring Attacks on Deep Neural Networks"
    changes = ("the budget is a drop in clean holdout micro AUROC over the 14 findings instead of accuracy; "
               "fine-tuning with per-finding BCE; channels of the final feature map (norm5 after ReLU)")

    def __init__(self, budget: float = 0.01, epochs: int = 1, lr: float = 1e-4, batch_size: int = 32,
                 layer: str = "prune") -> None:
        if not 0 <= budget < 1:
            raise UserError(f"fine-pruning budget must be in [0, 1), got {budget}")
        if epochs < 0:
            raise UserError(f"fine-pruning epochs must be 0 or more, got {epochs}")
        if not lr > 0:
            raise UserError(f"fine-pruning lr must be positive, got {lr}")
        if batch_size < 1:
            raise UserError(f"fine-pruning batch_size must be at least 1, got {batch_size}")
        if not layer.strip():
            raise UserError("fine-pruning layer must be prune, last, middle or a module name")
        self.budget, self.epochs, self.lr, self.batch_size, self.layer = budget, epochs, lr, batch_size, layer
        self.info: dict = {}

    def options(self) -> dict:
        return {k: v for k, v in super().options().items() if k != "info"}

    def repair(self, d: Defender) -> nn.Module:
        tune_x, tune_y, judge_x, judge_y = halves(d, "fine-pruning")
        n, half = len(d.holdout_images), len(tune_x)
        model = copy.deepcopy(d.model).eval()
        name = layer_name(model, self.layer)
        modules = dict(model.named_modules())
        if not name or name not in modules:
            raise UserError(f"fine-pruning: the model has no layer {self.layer!r}; name one of its modules")
        layer = modules[name]

        with torch.no_grad():
            activation, axis = self._mean_activation(model, layer, tune_x, d)
            channels = len(activation)
            order = np.argsort(activation, kind="stable")
            score = self._scorer(model, layer, judge_x, d, axis)
            base = d.task.repair_quality(judge_y, score(None))
            kept, tried, level_auroc = 0, [], base
            step = 1 if score.fast else max(1, math.ceil(channels / SLOW_LEVELS))
            for k in range(step, channels, step):  # never all channels
                mask = torch.ones(channels)
                mask[torch.from_numpy(order[:k].copy())] = 0
                value = d.task.repair_quality(judge_y, score(mask))
                tried.append((k, value))
                if base - value > self.budget:
                    break
                kept, level_auroc = k, value
        mask = torch.ones(channels)
        mask[torch.from_numpy(order[:kept].copy())] = 0
        replace_module(model, name, nn.Sequential(layer, ChannelMask(mask.to(d.device), axis)))
        self._fine_tune(model, tune_x, tune_y, d)
        model.eval()
        with torch.no_grad():
            after = d.task.repair_quality(judge_y, _scores(model, judge_x, d))
        self.info = {
            "layer": name, "channels": int(channels), "pruned": int(kept),
            "pruned_fraction": round(kept / channels, 4),
            "pruned_channels": sorted(int(i) for i in order[:kept]),
            "holdout_split": {"rank_and_fine_tune": int(half), "decide": int(n - half)},
            "holdout_auroc_unpruned": base, "holdout_auroc_pruned": level_auroc,
            "holdout_auroc_after_fine_tuning": after,
            "levels_tried": len(tried), "fast_path": bool(score.fast),
            "mean_activation_pruned_max": float(activation[order[kept - 1]]) if kept else None,
        }
        return model

    def _mean_activation(self, model: nn.Module, layer: nn.Module, images: np.ndarray, d: Defender
                         ) -> tuple[np.ndarray, int]:
        """Each channel's mean activation over the images and positions, and the layer's channel dimension (1 for
        maps, −1 for a transformer's tokens)."""
        total, count, axis = None, 0, 1
        captured = {}
        handle = layer.register_forward_hook(lambda _m, _i, out: captured.__setitem__("out", out))
        try:
            for lo in range(0, len(images), d.batch_size):
                model(_input(images[lo : lo + d.batch_size], d))
                out = captured.pop("out").float()
                if out.ndim < 2:
                    raise UserError(f"fine-pruning: layer {self.layer!r} gives no channel dimension")
                axis = channel_axis(model, out)
                per = out.movedim(axis, 0).reshape(out.shape[axis], -1)  # channels × (images · positions)
                total = per.sum(1) if total is None else total + per.sum(1)
                count += per.shape[1]
        finally:
            handle.remove()
        return (total / max(count, 1)).cpu().numpy(), axis

    def _scorer(self, model: nn.Module, layer: nn.Module, images: np.ndarray, d: Defender, axis: int):
        """A function mask → the task's scores of ``images`` with the layer's channels (dimension ``axis``) masked
        (None: unmasked)."""
        feats, logits = [], []
        captured = {}
        handle = layer.register_forward_hook(lambda _m, _i, out: captured.__setitem__("out", out))
        try:
            for lo in range(0, len(images), d.batch_size):
                logits.append(model(_input(images[lo : lo + d.batch_size], d)).float())
                feats.append(captured.pop("out"))
        finally:
            handle.remove()
        fast = hasattr(model, "forward_head") and all(_reproduces(model, f, z) for f, z in zip(feats, logits))
        base = d.task.activation(torch.cat(logits)).cpu().numpy()

        def score(mask):
            if mask is None:
                return base
            masker = ChannelMask(mask.to(feats[0].device), axis)
            if fast:
                return d.task.activation(torch.cat([model.forward_head(masker(f)).float() for f in feats])
                                         ).cpu().numpy()
            hook = layer.register_forward_hook(lambda _m, _i, out: masker(out))
            try:
                return _scores(model, images, d)
            finally:
                hook.remove()

        score.fast = fast
        return score

    def _fine_tune(self, model: nn.Module, images: np.ndarray, labels: np.ndarray, d: Defender) -> None:
        """The task's training loss (BCE, or cross-entropy) on the clean images, BatchNorm statistics frozen (eval
        mode): the holdout is small."""
        if self.epochs == 0 or not len(images):
            return
        params = list(model.parameters())
        flags = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.Adam(params, lr=self.lr)
        gen = seeded(d, 3001)
        y_all = torch.from_numpy(np.asarray(labels, np.float32))
        model.eval()
        with torch.enable_grad():
            for _ in range(self.epochs):
                for idx in minibatches(len(images), self.batch_size, gen):
                    y = y_all[idx].to(d.device)
                    loss = d.task.train_loss(model(_input(images[idx], d)).float(), y)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


def _reproduces(model: nn.Module, features: torch.Tensor, logits: torch.Tensor) -> bool:
    """Whether ``forward_head(features)`` gives ``logits`` (the pruned layer is the features' own)."""
    try:
        return torch.allclose(model.forward_head(features).float(), logits, atol=1e-4, rtol=1e-4)
    except (RuntimeError, ValueError, IndexError):  # another layer's shape: the head does not take it
        return False
