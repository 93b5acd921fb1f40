"""``neural-cleanse``: reverse-engineer the smallest trigger that turns each finding on; flag outliers (small side).

Wang et al., "Neural Cleanse: Identifying and Mitigating Backdoor Attacks in Neural Networks", IEEE S&P 2019.

For every finding c the defense optimises a mask m (H×W, in [0, 1]) and a pattern r (H×W, in [0, 1]) so that

    x' = (1 − m) · x + m · r

switches finding c on for clean holdout images x that lack it, while keeping the mask small:

    loss = BCE(logit_c(x'), 1) + λ · mean(m)

A backdoored finding needs a much smaller mask than the others (the trigger is a shortcut), so the L1 norms of
the 14 reversed masks are compared with the MAD anomaly index of the paper, small side only:

    index_c = (median − ‖m_c‖₁) / (1.4826 · MAD)

and a finding is flagged when its index exceeds ``threshold`` (2, the paper's rule).

Optimisation (the authors' procedure, shortened): m = sigmoid(a), r = sigmoid(b) (the paper's tanh/2 + 1/2 is
the same map up to scaling); a starts at a mask of 1 % everywhere (with seeded jitter), b at random (seeded per
finding); Adam (the authors' betas 0.5, 0.9) with learning rate ``lr``, mini-batches of ``batch_size``, at most
``steps`` steps. λ follows the authors' schedule, counted in steps instead of epochs so that it can act within a
small budget: λ = 0 until a mini-batch first reaches the target attack success (``success``), then λ = ``cost``;
after 2 steps in a row at or above ``success`` λ is multiplied by 1.5, after 2 steps in a row below it divided by
1.5^1.5. The mask kept is the smallest (L1) one with which a mini-batch reached ``success``; the search stops early
once λ has been both raised and lowered and that mask has not shrunk by 1 % for 10 steps. A finding whose attack
never reached ``success`` keeps its last mask and is never flagged (no small trigger was found for it).

``cost`` multiplies the mask's *mean* (its L1 norm over H·W), so it does not depend on the image size; 1.0 equals
the authors' ``init_cost`` of 1e-3 on the L1 sum at 32×32 px. More ``steps`` give smaller, more faithful masks.
"""

from __future__ import annotations

import numpy as np
import torch

from medbackdoor.defenses.base import DEFENSES, Defender, ModelDefense, Scan
from medbackdoor.errors import UserError
from medbackdoor.inference import with_channels

MAD_CONSISTENCY = 1.4826  # MAD of a normal sample × this = its standard deviation
PATIENCE = 2  # steps in a row above / below the target success before λ changes (the paper: 5 epochs)
COST_UP, COST_DOWN = 1.5, 1.5**1.5  # the paper's multipliers
EARLY_STOP = 10  # steps without the best mask shrinking by 1 % (the paper: 10 epochs)
MASK_START = 0.01  # the mask's starting value everywhere (before seeded jitter)


def anomaly_index(norms: np.ndarray) -> np.ndarray:
    """MAD anomaly index of the small side: (median − norm) / (1.4826 · MAD); NaN norms stay NaN."""
    norms = np.asarray(norms, np.float64)
    valid = norms[np.isfinite(norms)]
    if not len(valid):
        return np.full(norms.shape, np.nan)
    med = float(np.median(valid))
    mad = float(np.median(np.abs(valid - med)))
    mad = max(mad, 1e-6 * max(abs(med), 1.0))  # all norms equal: any smaller one is an outlier
    return (med - norms) / (MAD_CONSISTENCY * mad)


@DEFENSES.register("neural-cleanse")
class NeuralCleanse(ModelDefense):
    """Neural Cleanse (Wang et al., IEEE S&P 2019): the finding with an abnormally small reversed trigger.

    Multi-label changes: the reversed trigger targets one finding's sigmoid (BCE towards 1) instead of a softmax
    class, on holdout images that lack that finding; the other findings are left free. λ's schedule counts steps,
    not epochs, so 14 findings fit a small budget.

    Args:
        images: at most this many holdout images lacking the finding are used per finding.
        steps: at most this many optimisation steps per finding.
        batch_size: images per step.
        lr: Adam learning rate of the mask and pattern parameters (before their sigmoid).
        cost: λ once the attack first succeeds, on the mask's mean (1.0 = the paper's 1e-3 on the L1 sum at 32 px).
        success: the attack success (share of images whose finding turns positive) a mask must reach.
        threshold: flag a finding whose anomaly index exceeds this (the paper: 2).
    """

    paper = "Wang et al. 2019, Neural Cleanse: Identifying and Mitigating Backdoor Attacks in Neural Networks"
    changes = ("each finding's sigmoid is pushed positive (BCE) on holdout images lacking it, instead of a softmax "
               "class; λ schedule and early stop counted in steps; only the small side of the anomaly index")

    def __init__(self, images: int = 64, steps: int = 50, batch_size: int = 32, lr: float = 0.2, cost: float = 1.0,
                 success: float = 0.99, threshold: float = 2.0) -> None:
        if images < 1:
            raise UserError(f"neural-cleanse images must be at least 1, got {images}")
        if steps < 1:
            raise UserError(f"neural-cleanse steps must be at least 1, got {steps}")
        if batch_size < 1:
            raise UserError(f"neural-cleanse batch_size must be at least 1, got {batch_size}")
        if not lr > 0:
            raise UserError(f"neural-cleanse lr must be positive, got {lr}")
        if not cost > 0:
            raise UserError(f"neural-cleanse cost must be positive, got {cost}")
        if not 0 < success <= 1:
            raise UserError(f"neural-cleanse success must be in (0, 1], got {success}")
        if not threshold > 0:
            raise UserError(f"neural-cleanse threshold must be positive, got {threshold}")
        self.images, self.steps, self.batch_size = images, steps, batch_size
        self.lr, self.cost, self.success, self.threshold = lr, cost, success, threshold

    def scan(self, d: Defender) -> Scan:
        n_labels = len(d.label_names)
        first = np.asarray(d.holdout_images[0:1])
        if first.ndim not in (3, 4) or not len(first):
            raise UserError("neural-cleanse needs at least one holdout image (N×H×W or N×C×H×W)")
        h, w = first.shape[-2:]
        masks = np.zeros((n_labels, h, w), np.float32)
        patterns = np.zeros((n_labels, *first.shape[1:]), np.float32)  # a colour pattern per channel
        l1 = np.full(n_labels, np.nan)
        succ = np.full(n_labels, np.nan)
        used, steps_run, costs = [0] * n_labels, [0] * n_labels, [float("nan")] * n_labels
        reached = np.zeros(n_labels, bool)
        model = d.model
        was_training = model.training
        grads = [(p, p.requires_grad) for p in model.parameters()]
        model.eval()
        try:
            for p, _ in grads:
                p.requires_grad_(False)
            with torch.enable_grad():
                for c in range(n_labels):
                    rows = self._rows(d, c)
                    if not len(rows):
                        continue  # every holdout image has the finding: nothing to turn on
                    x = torch.from_numpy(np.asarray(d.holdout_images[rows])).to(d.device, torch.float32) / 255.0
                    out = self._reverse(d, c, with_channels(x))
                    masks[c], patterns[c] = out["mask"], out["pattern"]
                    l1[c], succ[c] = float(out["mask"].sum()), out["success"]
                    used[c], steps_run[c], costs[c] = len(rows), out["steps"], out["cost"]
                    reached[c] = out["reached"]
        finally:
            for p, flag in grads:
                p.requires_grad_(flag)
            model.train(was_training)
        index = anomaly_index(l1)
        flagged = np.nan_to_num(index, nan=-np.inf) > self.threshold
        flagged &= reached
        finite = index[np.isfinite(index)]
        info = {
            "masks": masks,
            "patterns": patterns,
            "l1": _floats(l1),
            "attack_success": _floats(succ),
            "anomaly_index": _floats(index),
            "reached_success": reached.tolist(),
            "median_l1": float(np.nanmedian(l1)) if np.isfinite(l1).any() else None,
            "images_used": used,
            "steps_run": steps_run,
            "final_cost": _floats(np.asarray(costs)),
            "max_index": float(finite.max()) if len(finite) else None,
        }
        return Scan(scores=index, flagged=flagged, info=info)

    def _rows(self, d: Defender, c: int) -> np.ndarray:
        """Holdout positions lacking finding c (a seeded choice of at most ``images``), in increasing order."""
        labels = d.holdout_labels[:, c]
        lacking = np.flatnonzero(labels == 0)  # NaN (unknown) is neither
        if len(lacking) > self.images:
            lacking = np.sort(d.rng(1000 + c).choice(lacking, self.images, replace=False))
        return lacking

    def _reverse(self, d: Defender, c: int, x: torch.Tensor) -> dict:
        """Optimise one finding's mask (H×W) and pattern (H×W for gray, C×H×W for colour) on images x (N×C×H×W
        float on the device)."""
        n, h, w = x.shape[0], x.shape[-2], x.shape[-1]
        gen = torch.Generator().manual_seed(int(d.rng(2000 + c).integers(2**62)))
        start = float(np.log(MASK_START / (1 - MASK_START)))
        mask_raw = (start + 0.1 * torch.randn((h, w), generator=gen)).to(d.device).requires_grad_(True)
        shape = (h, w) if x.shape[1] == 1 else (x.shape[1], h, w)
        pattern_raw = torch.randn(shape, generator=gen).to(d.device).requires_grad_(True)
        opt = torch.optim.Adam([mask_raw, pattern_raw], lr=self.lr, betas=(0.5, 0.9))  # the authors' betas
        cost, up, down = 0.0, 0, 0  # λ = 0 until the attack first succeeds
        raised = lowered = False  # early stop only once λ has been both raised and lowered (as the authors)
        best, best_l1, since_best = None, float("inf"), 0
        order = torch.randperm(n, generator=gen)
        pos, done = 0, 0
        while done < self.steps:
            done += 1
            if pos >= n:
                order, pos = torch.randperm(n, generator=gen), 0
            idx = order[pos : pos + self.batch_size].to(d.device)
            pos += self.batch_size
            mask, pattern = torch.sigmoid(mask_raw), torch.sigmoid(pattern_raw)
            xb = (1 - mask) * x[idx] + mask * pattern
            logits = d.model(xb).float()
            attack = d.task.target_loss(logits, c)  # multi-label: BCE of finding c towards 1; else cross-entropy
            mean = mask.mean()
            loss = attack + cost * mean
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            hit = float(d.task.hits(logits.detach(), c).float().mean()) >= self.success
            l1 = float(mean.detach()) * h * w
            if best is not None:
                since_best += 1
            if hit and l1 < best_l1:
                if l1 < 0.99 * best_l1:
                    since_best = 0
                best_l1, best = l1, (mask.detach().clone(), pattern.detach().clone())
            if since_best >= EARLY_STOP and raised and lowered:
                break
            if cost == 0:
                if hit:
                    cost = self.cost
                continue
            up, down = (up + 1, 0) if hit else (0, down + 1)
            if up >= PATIENCE:
                cost, up, raised = cost * COST_UP, 0, True
            elif down >= PATIENCE:
                cost, down, lowered = cost / COST_DOWN, 0, True
        reached = best is not None
        if not reached:  # never reached the target success: keep the last mask
            with torch.no_grad():
                best = (torch.sigmoid(mask_raw), torch.sigmoid(pattern_raw))
        mask, pattern = best
        with torch.no_grad():
            hits = 0
            for lo in range(0, n, self.batch_size):
                xb = (1 - mask) * x[lo : lo + self.batch_size] + mask * pattern
                hits += int(d.task.hits(d.model(xb).float(), c).sum())
        return {"mask": mask.float().cpu().numpy(), "pattern": pattern.float().cpu().numpy(),
                "success": hits / n, "reached": reached, "steps": done, "cost": float(cost)}


def _floats(values) -> list:
    """JSON-friendly: floats, None for NaN."""
    return [None if not np.isfinite(v) else float(v) for v in np.asarray(values, np.float64)]
