"""``strip``: STRIP (Gao et al. 2019), strong intentional perturbation, made multi-label.

Each input is blended with ``k`` clean reference images, ``(1 − alpha)·x + alpha·h``. A clean input's prediction
follows whatever it is blended with; a triggered input keeps the attacker's finding, because the trigger survives
the blend. STRIP measures that persistence with the softmax entropy of the blends (low = triggered).

The multi-label analogue of that entropy (the summed binary entropy of the 14 sigmoid outputs) is dominated by
the many confident negatives, whatever happens to the target, so it carries little of that signal (measurements:
docs/results/defenses-history.md and docs/results/defenses-tuning.md). The default score asks the persistence
question directly, without knowing the target: the *most persistent finding*, ``max_c mean_k p_c(blend_k)``, taken
relative to what blended clean images give for that finding (the same statistic computed on reference images
blended with the same ``k`` references).

``alpha`` matters more than in the paper: a blend lightens a black-square trigger to ``alpha·h``, and whether
the model still sees it at that contrast depends on the model (lower ``alpha`` keeps more of the trigger and
more of the input's own findings).
"""

from __future__ import annotations

import numpy as np
import torch

from medbackdoor.defenses.base import DEFENSES, Defender, InputDefense, one_of
from medbackdoor.defenses.saliency import check_fpr
from medbackdoor.errors import UserError

SCORES = ("auto", "persistence", "entropy")
BASELINES = ("none", "mean", "z")
STREAM = 101  # d.rng stream of the reference draw
MIN_SPREAD = 0.01  # floor on a finding's clean spread, so a finding that never moves cannot dominate a z-score


def choose_references(d: Defender, images: np.ndarray, k: int, stream: int, name: str) -> np.ndarray:
    """Indices of ``k`` distinct reference images, drawn once from ``d.rng(stream)``."""
    if len(images) < k:
        raise UserError(f"{name} needs at least k={k} reference images (the first half of the holdout); "
                        f"the holdout has {len(d.holdout_images)}")
    return np.sort(d.rng(stream).choice(len(images), size=k, replace=False))


def as_float(images: np.ndarray, d: Defender) -> torch.Tensor:
    """uint8 N×H×W (or N×C×H×W) → float of the same shape in [0, 1] on the defender's device."""
    return torch.from_numpy(np.ascontiguousarray(images)).to(d.device).float().div_(255.0)


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(1e-6, 1 - 1e-6)
    return -(p * p.log() + (1 - p) * (1 - p).log())


def softmax_entropy(p: torch.Tensor) -> torch.Tensor:
    """Shannon entropy ``−Σ_c p_c log p_c`` of class distributions along the last axis (STRIP's statistic)."""
    return -(p * p.clamp_min(1e-12).log()).sum(-1)


@DEFENSES.register("strip")
class Strip(InputDefense):
    """STRIP (Gao et al. 2019, ACSAC): does a prediction survive blending with clean images?

    Args:
        alpha: weight of the reference image in a blend, in (0, 1).
        k: blends per input (the same ``k`` reference images for every input, drawn once with ``d.rng``).
        score: ``auto`` (default: ``entropy`` on a single-label task, ``persistence`` on a multi-label one),
            ``persistence`` (the most persistent finding) or ``entropy`` (the paper's statistic, negated so that
            higher = more suspicious: on a single-label task the softmax entropy ``−mean_k H(p(blend_k))``, as
            in the paper; on a multi-label one the summed binary entropies ``−mean_k Σ_c H(p_c(blend_k))``).
        baseline: for ``persistence``, what the per-finding blended mean ``m_c`` is compared with, from reference
            images blended with the same references: ``none`` (``max_c m_c``), ``mean`` (``max_c m_c − μ_c``) or
            ``z`` (``max_c (m_c − μ_c) / σ_c``, the default).
        baseline_images: reference images (besides the ``k`` blended ones) that estimate ``μ_c`` and ``σ_c``.
        fpr: false-positive rate on clean holdout images that sets the flag threshold.
        calibration: ``split`` (the holdout's second half calibrates; the default) or ``crossfit`` (both
            halves, each scored with the other as the reference); see :class:`InputDefense`.
        ties: ``random`` (smoothed conformal p-value; the default) or ``conservative`` (a score tied with the
            threshold is not flagged); see :class:`InputDefense`.

    Multi-label changes: softmax entropy → the most persistent of the 14 sigmoid findings, normalised per
    finding by clean blends (the paper's entropy is kept as ``score: entropy``); one fixed set of references for
    all inputs rather than a new draw per input, so two inputs differ only in themselves. On a single-label task
    the default is the paper's softmax entropy; only the fixed reference set differs.
    """

    paper = "Gao et al. 2019, STRIP: a defence against trojan attacks on deep neural networks (ACSAC)"
    changes = ("multi-label: softmax entropy of blends → the most persistent sigmoid finding under blending, "
               "relative to clean blends per finding (entropy kept as score: entropy); single-label: the paper's "
               "softmax entropy; one fixed reference set for all inputs")
    label = "strip"

    def __init__(self, alpha: float = 0.5, k: int = 8, score: str = "auto", baseline: str = "z",
                 baseline_images: int = 128, fpr: float = 0.05,
                 calibration: str = "split", ties: str = "random") -> None:
        super().__init__(fpr, calibration, ties)
        check_fpr("strip", fpr)
        if not 0 < alpha < 1:
            raise UserError(f"strip alpha must be in (0, 1), got {alpha}")
        if k < 1:
            raise UserError(f"strip k must be at least 1, got {k}")
        one_of("strip", "score", score, SCORES)
        one_of("strip", "baseline", baseline, BASELINES)
        if baseline_images < 2:
            raise UserError(f"strip baseline_images must be at least 2, got {baseline_images}")
        self.alpha, self.k, self.score_kind, self.baseline = alpha, k, score, baseline
        self.baseline_images = baseline_images

    def options(self) -> dict:
        opts = super().options()
        opts["score"] = opts.pop("score_kind")  # stored under another name: ``score`` is the hook
        return opts

    def blended(self, d: Defender, images, refs: torch.Tensor) -> torch.Tensor:
        """Sigmoid scores of every input blended with every reference: N×k×C, ``k`` blends in one batch."""
        per = max(1, d.batch_size // len(refs))
        out = []
        with torch.no_grad():
            for lo in range(0, len(images), per):
                x = as_float(images[lo : lo + per], d)
                mix = (1 - self.alpha) * x[:, None] + self.alpha * refs[None]  # B×k×H×W
                out.append(d.forward(mix.flatten(0, 1)).view(len(x), len(refs), -1).cpu())
        return torch.cat(out) if out else torch.zeros(0, len(refs), len(d.label_names))

    def setup(self, d: Defender) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        """The ``k`` references and each finding's blended mean and spread on other reference images (cached)."""
        images, _ = self.reference(d)
        chosen = choose_references(d, images, self.k, STREAM, "strip")
        refs = as_float(images[chosen], d)
        key = f"strip:{self.alpha}:{self.k}:{self.baseline_images}:{self.reference_tag()}"

        def baseline():
            rest = np.setdiff1d(np.arange(len(images)), chosen)[: self.baseline_images]
            if len(rest) < 2:
                raise UserError(f"strip needs at least k + 2 = {self.k + 2} reference images for its baseline "
                                f"(the first half of the holdout); the holdout has {len(d.holdout_images)}")
            m = self.blended(d, images[rest], refs).mean(1).numpy()
            return np.stack([m.mean(0), np.maximum(m.std(0), MIN_SPREAD)])

        needed = self.statistic(d) == "persistence" and self.baseline != "none"
        mu, sigma = d.cached(key, baseline) if needed else (None, None)
        return refs, mu, sigma

    def statistic(self, d: Defender) -> str:
        """The score that runs: ``score``, with ``auto`` resolved by the task (``entropy`` when single-label)."""
        if self.score_kind != "auto":
            return self.score_kind
        return "entropy" if d.task.single_label else "persistence"

    def score(self, d: Defender, images) -> np.ndarray:
        self.info = {"score": self.statistic(d)}  # what ``auto`` resolved to, in the summary
        refs, mu, sigma = self.setup(d)
        p = self.blended(d, images, refs)
        if self.statistic(d) == "entropy":
            per_blend = softmax_entropy(p) if d.task.single_label else binary_entropy(p).sum(2)
            return -per_blend.mean(1).numpy().astype(np.float64)
        m = p.mean(1).numpy().astype(np.float64)
        if self.baseline == "mean":
            m = m - mu
        elif self.baseline == "z":
            m = (m - mu) / sigma
        return m.max(1)
