"""``sentinet``: SentiNet (Chou et al. 2020), does the input's most salient region hijack other images?

Grad-CAM of the input's top finding marks the region the prediction rests on; that region (the brightest
``fraction`` of the map) is cut out and pasted, at the same place, onto ``k`` clean reference images. A trigger
carries its finding wherever it goes, so it turns the references positive for that finding; a real lesion's
region rarely does on its own. As a control, the same region of each reference is filled with something inert
(the reference's own mean intensity, or uniform noise, the paper's "inert pattern"), which tells how often the
references are positive for that finding anyway or just from the occlusion.

An input on which no finding reaches ``threshold`` has no prediction to hijack with: it scores −1 (below any
measured value) without the Grad-CAM and pasting, which also makes the common all-negative clean image cheap.
"""

from __future__ import annotations

import numpy as np
import torch

from medbackdoor.defenses.base import DEFENSES, Defender, InputDefense, one_of
from medbackdoor.defenses.saliency import cam_maps, check_fpr, check_layer
from medbackdoor.defenses.strip import as_float, choose_references
from medbackdoor.errors import UserError

MEASURES = ("fooled", "excess", "confidence")
NEUTRALS = ("mean", "noise")
STREAM = 301  # d.rng streams: the reference draw, then the noise fill


def top_region(maps: np.ndarray, fraction: float) -> torch.Tensor:
    """N×H×W float masks of the ``round(fraction·H·W)`` brightest pixels of each map (at least one)."""
    flat = torch.from_numpy(np.ascontiguousarray(maps, np.float32)).flatten(1)
    n = min(max(1, round(fraction * flat.shape[1])), flat.shape[1])
    mask = torch.zeros_like(flat).scatter_(1, flat.topk(n, dim=1).indices, 1.0)
    return mask.view(maps.shape)


@DEFENSES.register("sentinet")
class SentiNet(InputDefense):
    """SentiNet (Chou et al. 2020, IEEE S&P Workshops): the salient region of a triggered input fools other images.

    Args:
        fraction: share of the image pasted: the brightest pixels of the Grad-CAM map, in (0, 0.5].
        k: reference images the region is pasted onto (the same ``k`` for every input, drawn once with ``d.rng``).
        layer: Grad-CAM layer, ``middle`` (default; twice as fine) or ``last``.
        measure: ``fooled`` (share of references the pasted region makes positive for the input's top finding),
            ``excess`` (that share minus the share the inert fill makes positive; the default) or
            ``confidence`` (mean probability of the finding with the region pasted minus with the inert fill).
        neutral: the inert fill: ``mean`` (each reference's mean intensity) or ``noise`` (uniform, seeded).
        threshold: the probability at which a reference counts as positive (fooled).
        fpr: false-positive rate on clean holdout images that sets the flag threshold.
        calibration: ``split`` (the holdout's second half calibrates; the default) or ``crossfit`` (both
            halves, each scored with the other as the reference); see :class:`InputDefense`.
        ties: ``random`` (smoothed conformal p-value; the default) or ``conservative`` (a score tied with the
            threshold is not flagged); see :class:`InputDefense`.

    On a single-label task it is the paper's: the predicted class is the argmax, every input is tested, and a
    reference is fooled when its argmax becomes that class (``threshold`` is not used).

    Multi-label changes: the predicted class → the top-scoring finding, tested only when it is positive (else the
    score is −1); "fooled" (classified as that class) → that finding's probability reaching ``threshold`` on the
    reference; the paper's two-dimensional decision boundary (fooled count vs. confidence on the inert pattern) →
    one score, the fooled share above the inert one. Default layer ``middle``: at 64 px the last DenseNet map is
    2×2, too coarse for its brightest ``fraction`` to fall on a small trigger; the middle map (4×4) is twice as
    fine (measurements: docs/results/defenses-history.md and docs/results/defenses-tuning.md).
    """

    paper = "Chou et al. 2020, SentiNet: detecting localized universal attacks against deep learning systems " \
            "(IEEE S&P Workshops)"
    changes = ("multi-label: the predicted class → the top sigmoid finding, tested only when positive (else −1); "
               "fooled = that finding reaching the threshold on a reference (single-label: the argmax, as the "
               "paper); one score (fooled share minus inert-fill share) "
               "instead of a 2-D decision boundary; Grad-CAM at the middle layer by default")
    label = "sentinet"

    def __init__(self, fraction: float = 0.05, k: int = 8, layer: str = "middle", measure: str = "excess",
                 neutral: str = "mean", threshold: float = 0.5, fpr: float = 0.05,
                 calibration: str = "split", ties: str = "random") -> None:
        super().__init__(fpr, calibration, ties)
        check_fpr("sentinet", fpr)
        check_layer("sentinet", layer)
        if not 0 < fraction <= 0.5:
            raise UserError(f"sentinet fraction must be in (0, 0.5], got {fraction}")
        if k < 1:
            raise UserError(f"sentinet k must be at least 1, got {k}")
        one_of("sentinet", "measure", measure, MEASURES)
        one_of("sentinet", "neutral", neutral, NEUTRALS)
        if not 0 < threshold < 1:
            raise UserError(f"sentinet threshold must be in (0, 1), got {threshold}")
        self.fraction, self.k, self.layer, self.measure = fraction, k, layer, measure
        self.neutral, self.threshold = neutral, threshold

    def references(self, d: Defender) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` reference images (k×H×W float) and their inert fills."""
        images, _ = self.reference(d)
        refs = as_float(images[choose_references(d, images, self.k, STREAM, "sentinet")], d)
        if self.neutral == "mean":
            return refs, refs.mean((-2, -1), keepdim=True).expand_as(refs)  # per image (and channel)
        return refs, torch.from_numpy(d.rng(STREAM + 1).random(tuple(refs.shape), np.float32)).to(d.device)

    @staticmethod
    def finding_scores(d: Defender, refs: torch.Tensor, source: torch.Tensor, masks: torch.Tensor,
                       targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """On reference k with mask b filled from ``source``: the B×k probability of ``targets[b]`` and whether
        the reference is fooled into it (B×k bool): the class is the argmax on a single-label task (the paper's),
        the finding's probability reaches ``threshold`` on a multi-label one (decided by the caller: None here).

        ``source`` broadcasts to B×k×H×W: the inputs (B×1×H×W) or the inert fills (1×k×H×W).
        """
        m = masks[:, None] if refs.dim() == 3 else masks[:, None, None]  # B×1×H×W, or B×1×1×H×W for colour
        pasted = refs[None] * (1 - m) + source * m
        p = d.forward(pasted.flatten(0, 1)).view(len(masks), len(refs), -1)
        chosen = p[torch.arange(len(masks)), :, targets]
        argmax = p.argmax(2) == targets[:, None] if d.task.single_label else None
        return chosen, argmax

    def score(self, d: Defender, images) -> np.ndarray:
        refs, fill = self.references(d)
        per = max(1, d.batch_size // self.k)
        out = [np.zeros(0)]
        for lo in range(0, len(images), per):
            x8 = np.asarray(images[lo : lo + per])
            p = d.outputs(x8)
            targets = p.argmax(1)
            s = np.full(len(x8), -1.0)  # no finding positive: no prediction to hijack with
            if d.task.single_label:  # every input has a predicted class to hijack with
                tested = np.arange(len(x8))
            else:
                tested = np.flatnonzero(p[np.arange(len(x8)), targets] >= self.threshold)
            if len(tested):
                s[tested] = self.hijack(d, x8[tested], targets[tested], refs, fill)
            out.append(s)
        return np.concatenate(out)

    def hijack(self, d: Defender, x8: np.ndarray, targets: np.ndarray, refs: torch.Tensor,
               fill: torch.Tensor) -> np.ndarray:
        """The measure for inputs ``x8`` (uint8) whose top findings ``targets`` are positive."""
        masks = top_region(cam_maps(d, x8, targets, self.layer), self.fraction).to(d.device)
        t = torch.as_tensor(targets, dtype=torch.long, device=d.device)
        with torch.no_grad():
            fooled, fooled_class = self.finding_scores(d, refs, as_float(x8, d)[:, None], masks, t)
            inert, inert_class = (None, None) if self.measure == "fooled" else \
                self.finding_scores(d, refs, fill[None], masks, t)
        if self.measure == "confidence":
            return (fooled.mean(1) - inert.mean(1)).cpu().numpy()
        hit = fooled_class if fooled_class is not None else fooled >= self.threshold
        s = hit.double().mean(1)
        if inert is not None:
            s = s - (inert_class if inert_class is not None else inert >= self.threshold).double().mean(1)
        return s.cpu().numpy()
