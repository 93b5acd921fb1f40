"""``scale-up``: SCALE-UP (Guo et al. 2023), scaled prediction consistency, made multi-label.

Amplify every pixel by ``n = 2, …, max_scale`` (clipped to [0, 1]). A clean image washes out and its
prediction drifts; a triggered one keeps the attacker's prediction, because the trigger still wins (a black
square stays black under any amplification). The paper's statistic, the scaled prediction consistency (SPC), is
the share of scales whose argmax class equals the original one.

A multi-label prediction is a vector of 14 scores, and there are two ways to ask whether it is kept:

* ``consistency: vector``: the whole vector. The score is minus the mean absolute change of the 14
  sigmoid outputs between the input and its amplified copies. It is meant for a model on which amplification
  alone turns the target finding on in clean images too: a clean image whose top finding is the target then keeps
  that finding as well as a triggered one does, and only its other scores, which move where the triggered
  image's do not, tell the two apart.
* per finding: the findings predicted positive (``p ≥ threshold``; the top finding when none is) each get the
  share of scales on which they stay positive (``indicator``, the paper's SPC) or their mean probability over
  the scales (``probability``, the default: a graded value, where the indicator's few values tie and starve a
  calibrated threshold; how the default was chosen: docs/results/defenses-tuning.md); the input scores its most
  consistent predicted finding. Suits an attack that adds the target and leaves the rest of the prediction to the
  image, and full-image blend triggers, which amplification partly washes out and which can invert the vector score
  (earlier measurements: docs/results/defenses-history.md).

The paper's data-limited variant (``normalise``) standardises SPC by the mean and spread of benign SPC of the
predicted class. Here: per finding, from the consistency of that finding on reference images that predict it
(``vector``: that top finding), pooled over all findings where fewer than ``min_count`` reference images do.
"""

from __future__ import annotations

import numpy as np
import torch

from medbackdoor.defenses.base import DEFENSES, Defender, InputDefense, one_of
from medbackdoor.defenses.saliency import check_fpr
from medbackdoor.defenses.strip import as_float
from medbackdoor.errors import UserError

CONSISTENCY = ("auto", "indicator", "probability", "vector")
MIN_SPREAD = 0.05  # floor on a benign spread: an indicator can be constant on few reference images


@DEFENSES.register("scale-up")
class ScaleUp(InputDefense):
    """SCALE-UP (Guo et al. 2023, ICLR): does the prediction survive amplifying the pixel values?

    Args:
        max_scale: the scales are ``2, 3, …, max_scale`` (≥ 2). Default 3: beyond ×3 nearly every pixel of a
            chest X-ray is saturated, so a larger scale adds little, and each scale costs one forward pass per
            input (see docs/results/defenses-tuning.md).
        consistency: ``auto`` (the default: ``indicator`` on a single-label task, ``probability`` on a
            multi-label one), ``probability`` (mean probability of a predicted finding over the scales: graded,
            fewer ties), ``indicator`` (share of scales on which a predicted finding stays positive; on a
            single-label task the share of scales whose argmax class is the input's, the paper's SPC) or
            ``vector`` (minus the mean absolute change of all the scores).
        normalise: the paper's data-limited variant: ``(cons_c − μ_c) / σ_c`` with ``μ_c``, ``σ_c`` the
            consistency on clean reference images whose prediction includes ``c`` (``vector``: whose top
            finding is ``c``).
        threshold: the probability at which a finding counts as positive.
        min_count: reference images a finding needs for its own ``μ_c``, ``σ_c`` (else pooled over findings).
        fpr: false-positive rate on clean holdout images that sets the flag threshold.
        calibration: ``split`` (the holdout's second half calibrates; the default) or ``crossfit`` (both
            halves, each scored with the other as the reference); see :class:`InputDefense`.
        ties: ``random`` (smoothed conformal p-value; the default) or ``conservative`` (a score tied with the
            threshold is not flagged); see :class:`InputDefense`.

    Multi-label changes: agreement of argmaxes → each predicted-positive finding (the top one if none) staying
    positive, the most consistent one scoring (default), or how little the 14-score vector moves (``vector``); the
    benign normalisation is per finding instead of per class. On a single-label task the default is the paper's:
    the predicted class is the argmax, SPC the share of scales that keep it, normalised per predicted class.
    """

    paper = "Guo et al. 2023, SCALE-UP: an efficient black-box input-level backdoor detection via analyzing " \
            "scaled prediction consistency (ICLR)"
    changes = ("multi-label: argmax agreement → each predicted-positive finding (top finding if none) staying "
               "positive, the most consistent scoring (default), or the mean absolute change of the 14 sigmoid "
               "scores; data-limited normalisation per finding on reference images; single-label: the paper's "
               "argmax SPC")
    label = "scale-up"

    def __init__(self, max_scale: int = 3, consistency: str = "auto", normalise: bool = True,
                 threshold: float = 0.5, min_count: int = 5, fpr: float = 0.05,
                 calibration: str = "split", ties: str = "random") -> None:
        super().__init__(fpr, calibration, ties)
        check_fpr("scale-up", fpr)
        if max_scale < 2:
            raise UserError(f"scale-up max_scale must be at least 2, got {max_scale}")
        one_of("scale-up", "consistency", consistency, CONSISTENCY)
        if not 0 < threshold < 1:
            raise UserError(f"scale-up threshold must be in (0, 1), got {threshold}")
        if min_count < 2:
            raise UserError(f"scale-up min_count must be at least 2, got {min_count}")
        self.max_scale, self.consistency, self.normalise = max_scale, consistency, normalise
        self.threshold, self.min_count = threshold, min_count

    def scaled_outputs(self, d: Defender, images) -> torch.Tensor:
        """Sigmoid scores at every scale, N×S×C (scale 1, the input itself, first); one batch holds B×S images."""
        scales = torch.arange(1, self.max_scale + 1, dtype=torch.float32, device=d.device)
        per = max(1, d.batch_size // len(scales))
        out = []
        with torch.no_grad():
            for lo in range(0, len(images), per):
                x = as_float(images[lo : lo + per], d)
                factor = scales.view(1, -1, *([1] * (x.dim() - 1)))
                scaled = (x[:, None] * factor).clamp_(0, 1)  # B×S×H×W, or B×S×C×H×W for colour
                out.append(d.forward(scaled.flatten(0, 1)).view(len(x), len(scales), -1).cpu())
        return torch.cat(out) if out else torch.zeros(0, len(scales), len(d.label_names))

    def consistencies(self, d: Defender, images) -> tuple[np.ndarray, np.ndarray]:
        """Per image: the findings it is scored on (N×C bool) and each finding's consistency over scales (N×C)."""
        p = self.scaled_outputs(d, images).double()
        original, scaled = p[:, 0], p[:, 1:]
        consistency = self.statistic(d)
        if d.task.single_label and consistency != "vector":  # the predicted class: the argmax, kept or not
            top = torch.zeros_like(original, dtype=torch.bool)
            top[torch.arange(len(p)), original.argmax(1)] = True
            if consistency == "indicator":  # the paper's SPC: the share of scales whose argmax is the input's
                kept = (scaled.argmax(2) == original.argmax(1)[:, None]).double().mean(1)
            else:  # the input's class's mean probability over the scales
                kept = scaled.gather(2, original.argmax(1)[:, None, None].expand(-1, scaled.shape[1], 1))[..., 0]
                kept = kept.mean(1)
            return top.numpy(), (kept[:, None] * top.double()).numpy()
        if consistency == "vector":  # one value per image, grouped under its top finding
            drift = (scaled - original[:, None]).abs().mean((1, 2))
            top = torch.zeros_like(original, dtype=torch.bool)
            top[torch.arange(len(p)), original.argmax(1)] = True
            return top.numpy(), (-drift[:, None]).expand_as(original).numpy()
        top = original >= self.threshold
        none = ~top.any(1)
        top[none, original[none].argmax(1)] = True
        kept = (scaled >= self.threshold).double() if consistency == "indicator" else scaled
        return top.numpy(), kept.mean(1).numpy()

    def statistic(self, d: Defender) -> str:
        """The consistency that runs: ``consistency``, with ``auto`` resolved by the task."""
        if self.consistency != "auto":
            return self.consistency
        return "indicator" if d.task.single_label else "probability"

    def benign(self, d: Defender) -> tuple[np.ndarray, np.ndarray]:
        """Per finding, the mean and spread of its consistency on reference images that predict it (cached)."""
        key = f"scale-up:{self.max_scale}:{self.consistency}:{self.threshold}:{self.min_count}:{self.reference_tag()}"

        def compute():
            images, _ = self.reference(d)
            if len(images) < self.min_count:
                raise UserError(f"scale-up normalise needs at least min_count={self.min_count} reference images "
                                f"(the first half of the holdout); the holdout has {len(d.holdout_images)}")
            predicted, cons = self.consistencies(d, images)
            pooled = cons[predicted]
            mu = np.full(cons.shape[1], pooled.mean())
            sigma = np.full(cons.shape[1], pooled.std())
            for c in range(cons.shape[1]):
                own = cons[predicted[:, c], c]
                if len(own) >= self.min_count:
                    mu[c], sigma[c] = own.mean(), own.std()
            return np.stack([mu, np.maximum(sigma, MIN_SPREAD)])

        return d.cached(key, compute)

    def score(self, d: Defender, images) -> np.ndarray:
        self.info = {"consistency": self.statistic(d)}  # what ``auto`` resolved to, in the summary
        predicted, cons = self.consistencies(d, images)
        if self.normalise:
            mu, sigma = self.benign(d)
            cons = (cons - mu) / sigma
        return np.where(predicted, cons, -np.inf).max(1) if len(cons) else np.zeros(0)
