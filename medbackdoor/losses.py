"""Losses shared by the training loop and the defenses (which must not import the training code)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def label_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per image, the BCE *summed* over its known findings (NaN targets left out), averaged over the images: the
    negative log-likelihood of the label vector (findings independent given the image), as cross-entropy is of
    a class. Methods whose step sizes or thresholds were set for cross-entropy (ABL's γ, ANP's mask lr, I-BAU's
    perturbation lr, FT-SAM's SGD) keep their scale with it; the mean over findings would divide it by their
    number."""
    known = torch.isfinite(targets)
    per = F.binary_cross_entropy_with_logits(logits.float(), torch.where(known, targets, torch.zeros_like(targets)),
                                             reduction="none")
    return (per * known).sum() / max(len(targets), 1)
