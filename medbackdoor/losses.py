"""Losses shared by the training loop and the defenses (which must not import the training code)."""

from __future__ import annotations

import numpy as np
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


def class_weights(labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """CheXNet-Keras class balance: positives weighted by the negative share, negatives by the positive share."""
    pos = np.nan_to_num(np.nanmean(labels, 0)) if np.isnan(labels).any() else labels.mean(0)  # unknown: left out
    return torch.tensor(1.0 - pos, dtype=torch.float32), torch.tensor(pos, dtype=torch.float32)


def bce_loss(logits: torch.Tensor, targets: torch.Tensor, weights=None) -> torch.Tensor:
    """Mean binary cross-entropy over the known labels: NaN targets (unknown) add nothing and count for nothing.

    Without NaN this is exactly ``binary_cross_entropy_with_logits`` (mean over every entry).
    """
    known = torch.isfinite(targets)
    if bool(known.all()):
        if weights is None:
            return F.binary_cross_entropy_with_logits(logits, targets)
        w_pos, w_neg = (w.to(logits.device) for w in weights)
        return F.binary_cross_entropy_with_logits(logits, targets, weight=targets * w_pos + (1 - targets) * w_neg)
    return masked_bce(logits, targets, None if weights is None else tuple(w.to(logits.device) for w in weights))


def masked_bce(logits: torch.Tensor, targets: torch.Tensor, weights=None) -> torch.Tensor:
    """:func:`bce_loss` without its host-side check for NaN (the form a CUDA graph can hold): always the masked
    mean, equal to ``bce_loss`` up to float rounding. ``weights`` must already be on the device."""
    known = torch.isfinite(targets)
    filled = torch.where(known, targets, torch.zeros_like(targets))
    weight = known.to(logits.dtype)
    if weights is not None:
        weight = weight * (filled * weights[0] + (1 - filled) * weights[1])
    per = F.binary_cross_entropy_with_logits(logits, filled, weight=weight, reduction="sum")
    return per / known.sum().clamp(min=1)


def single_label_weights(labels: np.ndarray) -> tuple[torch.Tensor]:
    """Class weights of a single-label training set (one-hot rows, NaN unknown): class c weighted by
    n / (C · n_c), scikit-learn's "balanced" weights (a class absent from the set gets weight 0)."""
    known = np.isfinite(labels).all(1)
    counts = labels[known].sum(0)
    n, c = counts.sum(), labels.shape[1]
    weights = np.divide(n, c * counts, out=np.zeros_like(counts, dtype=np.float64), where=counts > 0)
    return (torch.tensor(weights, dtype=torch.float32),)


def one_hot_classes(targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Of N×C one-hot label rows (a row of NaN: unknown): which rows are known, and each row's class (0 where
    unknown)."""
    known = torch.isfinite(targets).all(-1)
    return known, torch.where(known[:, None], targets, torch.zeros_like(targets)).argmax(-1)


def ce_loss(logits: torch.Tensor, targets: torch.Tensor, weights=None) -> torch.Tensor:
    """Mean cross-entropy of one-hot label rows ``targets`` (a row of NaN: unknown, left out and not counted),
    weighted per class by ``weights[0]`` (:func:`single_label_weights`) as ``F.cross_entropy`` weights: the
    weighted mean over the known rows. No host-side check, so a CUDA graph can hold it."""
    known, classes = one_hot_classes(targets)
    per = F.cross_entropy(logits.float(), classes, reduction="none")
    w = known.to(per.dtype)
    if weights is not None:
        w = w * weights[0].to(per.device)[classes]
    return (per * w).sum() / w.sum().clamp(min=1e-12)
