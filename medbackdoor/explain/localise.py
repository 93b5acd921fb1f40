"""Saliency as a measurement: how much of it lands on the trigger, and whether it flags triggered inputs.

Localisation (the trigger box is known): the share of saliency mass inside the box dilated by ``k`` px, and
the pointing game (is the map's maximum inside the dilated box). Detection (the box is *not* known): a score
computed from the map alone, compared between clean and triggered images by AUROC and TPR at 5% FPR.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve


def trigger_boxes(clean: np.ndarray, triggered: np.ndarray) -> np.ndarray:
    """Per image, the bounding box ``(top, left, bottom, right)`` of the pixels the trigger changed.

    Found from the images themselves, so it holds for any trigger and for the ``source`` stage (where crop and
    resize move and shrink the trigger); ``(-1, -1, -1, -1)`` where no pixel changed.
    """
    boxes = np.full((len(clean), 4), -1, dtype=np.int64)
    for i, diff in enumerate(np.asarray(clean) != np.asarray(triggered)):
        if diff.ndim == 3:  # a colour image: a pixel changed when any channel did
            diff = diff.any(0)
        rows, cols = np.flatnonzero(diff.any(1)), np.flatnonzero(diff.any(0))
        if len(rows):
            boxes[i] = rows[0], cols[0], rows[-1] + 1, cols[-1] + 1
    return boxes


def box_masks(boxes: np.ndarray, shape: tuple[int, int], dilate: int = 0) -> np.ndarray:
    """N×H×W bool masks of the boxes grown by ``dilate`` px on every side (clipped to the image)."""
    h, w = shape
    masks = np.zeros((len(boxes), h, w), dtype=bool)
    for i, (top, left, bottom, right) in enumerate(boxes):
        if top >= 0:
            rows = slice(max(top - dilate, 0), min(bottom + dilate, h))
            masks[i, rows, max(left - dilate, 0) : min(right + dilate, w)] = True
    return masks


def mass_in_box(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Share of each map's total saliency inside its mask (NaN for an all-zero map)."""
    total = maps.reshape(len(maps), -1).sum(1)
    inside = (maps * masks).reshape(len(maps), -1).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, inside / total, np.nan)


def pointing_game(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """1 where the map's maximum falls inside the mask, else 0 (NaN for an all-zero map)."""
    flat = maps.reshape(len(maps), -1)
    hit = masks.reshape(len(masks), -1)[np.arange(len(maps)), flat.argmax(1)].astype(float)
    return np.where(flat.max(1) > 0, hit, np.nan)


def top_mass(maps: np.ndarray, fraction: float = 0.01) -> np.ndarray:
    """Share of saliency in the brightest ``fraction`` of pixels: high when the map is a sharp spot."""
    flat = np.sort(maps.reshape(len(maps), -1), axis=1)[:, ::-1]
    k = max(1, int(round(fraction * flat.shape[1])))
    total = flat.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, flat[:, :k].sum(1) / total, 0.0)


def concentration(maps: np.ndarray) -> np.ndarray:
    """1 − normalised entropy of the map as a distribution: 0 for a flat map, 1 for a single pixel."""
    flat = maps.reshape(len(maps), -1).astype(np.float64)
    total = flat.sum(1, keepdims=True)
    p = np.divide(flat, total, out=np.zeros_like(flat), where=total > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(p > 0, p * np.log(p), 0.0).sum(1)
    return np.where(total[:, 0] > 0, 1.0 - entropy / np.log(flat.shape[1]), 0.0)


DETECTORS = {"top1pct_mass": top_mass, "concentration": concentration}


def detection_scores(clean_scores: np.ndarray, triggered_scores: np.ndarray, fpr: float = 0.05) -> dict:
    """AUROC (triggered = positive) and the best TPR whose false-positive rate is at most ``fpr``."""
    y = np.r_[np.zeros(len(clean_scores)), np.ones(len(triggered_scores))]
    s = np.r_[clean_scores, triggered_scores]
    if len(np.unique(y)) < 2:
        return {"auroc": float("nan"), "tpr_at_fpr": float("nan")}
    fprs, tprs, _ = roc_curve(y, s)
    return {"auroc": float(roc_auc_score(y, s)), "tpr_at_fpr": float(tprs[fprs <= fpr].max())}
