"""What a defender has, and the small bases every defense builds on (one hook each).

The rule: a defense sees only :class:`Defender`: the trained model, the training set *as trained* (images and
labels, in an order of their own), a small clean holdout (the run's validation split) and, for a defense that
trains, the run's training recipe. The trigger, the target and which samples were poisoned live in
:class:`Truth`, which the runner uses to *score* a defense after it answered. A defense runs in a process of its
own that is given the defender's materials alone (:mod:`medbackdoor.defenses.isolation`), so nothing it holds
in memory or is told leads to the truth.

Bases by kind, each with one hook to override:

* :class:`DataDefense` (training-set cleansing): ``suspicion(d) -> Detection`` (a score per training sample,
  higher = more suspicious, and the method's own flags);
* :class:`InputDefense` (inference-time detection): ``score(d, images) -> scores``; the base calibrates the
  flag threshold on clean holdout images (never the test set) at ``fpr``;
* :class:`ModelDefense` (scanning): ``scan(d) -> Scan`` (an anomaly score per label and a verdict);
* :class:`Mitigation` (repair): ``repair(d) -> model`` or ``purify(d, images) -> images`` (or, with
  ``trains = True``, ``train(d) -> (model, losses, isolated)``: a model trained anew on the training set).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from medbackdoor._registry import Registry
from medbackdoor.errors import UserError
from medbackdoor.models.info import feature_vector

DEFENSES: Registry[type] = Registry("defense", group="medbackdoor.defenses")  # its base: Defense, below
KINDS = ("data", "input", "model", "mitigation")
DEFAULT_HOLDOUT = 1000  # clean holdout images a defender gets when none is asked for (capped at the split's size)


class Images:
    """A read-only, sliceable view of N×H×W uint8 images; a read is always a copy.

    A :class:`Defender`'s images wrap a pixel array (an array or a memmap: the defender's materials,
    :mod:`medbackdoor.defenses.isolation`) and nothing else. Inputs given to an input defense's ``score`` are the
    same: plain arrays.
    """

    __slots__ = ("_pixels",)

    def __init__(self, pixels) -> None:
        self._pixels = pixels

    def __len__(self) -> int:
        return len(self._pixels)

    def __getitem__(self, sel) -> np.ndarray:
        return np.array(self._pixels[sel])

    @classmethod
    def of(cls, array) -> Images:
        """Wrap anything sliceable that returns uint8 N×H×W or N×C×H×W arrays (an array, a memmap, a lazy
        view)."""
        return cls(array)

    @property
    def holds_pixels_only(self) -> bool:
        """True when the view wraps a plain uint8 N×H×W (or N×C×H×W) array or memmap, so it can reach nothing but
        pixels."""
        p = self._pixels
        return isinstance(p, np.ndarray) and p.dtype == np.uint8 and p.ndim in (3, 4)


class Defender:
    """The defender's knowledge: model, training set as trained, clean holdout; plus cached model outputs.

    Args:
        model: the trained classifier (logits), any saved epoch; put in eval mode.
        train_images: the training samples as trained (len N_train; appended poisoned copies included).
        train_labels: N_train × C labels as trained.
        holdout_images: clean images the defender trusts (the validation split).
        holdout_labels: the holdout's labels.
        label_names: the C finding names.
        dataset: the registered name of the dataset the run trained on ("" when unknown): a defender knows where
            its training data came from (e.g. ``label-audit`` refuses a reference built from the same data).
        device: where the model runs.
        batch_size: scoring batch size.
        seed: seeds every random choice a defense makes (the defender's own, independent of the attack's).
        training: the run's training recipe (``train`` settings: epochs, batch size, learning rate, ...), for a
            defense that trains a model anew; its ``seed`` is the defender's.
        new_model: builds a fresh, untrained model of the run's architecture (from the run's pretrained weights,
            if it started from any).
        task: the run's task type (``multilabel``, ``multiclass`` or ``binary``, :mod:`medbackdoor.task`): how
            the model's outputs become scores, and what a label row is.
    """

    def __init__(self, model: nn.Module, train_images: Images, train_labels: np.ndarray, holdout_images: Images,
                 holdout_labels: np.ndarray, label_names: list[str], device: torch.device | str = "cpu",
                 batch_size: int = 128, seed: int = 0, dataset: str = "", training=None, new_model=None,
                 task: str = "multilabel") -> None:
        from medbackdoor.task import task_of

        for what, images in (("train_images", train_images), ("holdout_images", holdout_images)):
            if not (isinstance(images, Images) and images.holds_pixels_only):
                raise TypeError(f"a Defender's {what} must be Images of a uint8 N×H×W array (pixels only, e.g. "
                                "an array loaded from the defender's materials), not a lazy view")
        self.model = model.eval()
        self.train_images, self.train_labels = train_images, np.asarray(train_labels, np.float32)
        self.holdout_images, self.holdout_labels = holdout_images, np.asarray(holdout_labels, np.float32)
        self.label_names, self.dataset = list(label_names), str(dataset)
        self.task = task_of(task, self.label_names)
        self.device = torch.device(device)
        self.batch_size, self.seed = batch_size, seed
        self.training, self.new_model = training, new_model
        self._cache: dict[str, np.ndarray] = {}

    def rng(self, stream: int = 0) -> np.random.Generator:
        return np.random.default_rng([self.seed, stream])

    # --- model outputs, batched and cached -------------------------------------------------------------------------

    @torch.no_grad()
    def outputs(self, images, features: bool = False) -> np.ndarray:
        """The task's scores (N×C: sigmoid, or softmax for a single-label task) or pooled penultimate features
        (N×D, ``features=True``) of uint8 images."""
        out = []
        for lo in range(0, len(images), self.batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[lo : lo + self.batch_size]))
            out.append(self.forward(x, features).cpu().numpy())
        width = out[0].shape[1] if out else 0
        return np.concatenate(out) if out else np.zeros((0, width), np.float32)

    def forward(self, x: torch.Tensor, features: bool = False) -> torch.Tensor:
        """One batch: uint8 or float [0, 1] images (N×H×W, or N×C×H×W) → scores or features, on the device."""
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        x = x.to(self.device, torch.float32)
        if x.ndim == 3:
            x = x.unsqueeze(1)
        if features:
            return feature_vector(self.model, x)
        return self.task.activation(self.model(x).float())

    def cached(self, key: str, compute) -> np.ndarray:
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    @property
    def train_features(self) -> np.ndarray:
        return self.cached("train_features", lambda: self.outputs(self.train_images, features=True))

    @property
    def holdout_features(self) -> np.ndarray:
        return self.cached("holdout_features", lambda: self.outputs(self.holdout_images, features=True))

    @property
    def train_scores(self) -> np.ndarray:
        return self.cached("train_scores", lambda: self.outputs(self.train_images))

    @property
    def holdout_scores(self) -> np.ndarray:
        return self.cached("holdout_scores", lambda: self.outputs(self.holdout_images))


def one_of(defense: str, option: str, value, choices) -> None:
    """Raise one line (``UserError``) unless ``value`` is one of ``choices``: the check every choice option needs."""
    if value not in choices:
        raise UserError(f"{defense} {option} must be one of {', '.join(map(str, choices))}, got {value!r}")


@dataclass
class Truth:
    """What the attacker did: for scoring a defense only, never for running it.

    ``poisoned``: per training sample as trained; ``target``: the attacked label index; ``trigger_mask``: H×W bool
    at the model input, where the trigger writes, when it has one fixed, localised mask (None otherwise, and
    ``trigger_mask_reason`` says why); ``extra``: anything else a scorer needs.
    """

    poisoned: np.ndarray
    target: int
    trigger_mask: np.ndarray | None = None
    trigger_mask_reason: str = ""
    extra: dict = field(default_factory=dict)


@dataclass
class Detection:
    """A data defense's answer: one score per training sample (higher = more suspicious) and its flags."""

    scores: np.ndarray
    flagged: np.ndarray
    columns: dict[str, np.ndarray] = field(default_factory=dict)  # extra per-sample columns (e.g. group)
    info: dict = field(default_factory=dict)


@dataclass
class Scan:
    """A model defense's answer: an anomaly score per label, the labels it flags, and extra results."""

    scores: np.ndarray
    flagged: np.ndarray
    info: dict = field(default_factory=dict)

    @property
    def backdoored(self) -> bool:
        return bool(np.any(self.flagged))


class Defense:
    """Common to every defense: a registered name, a kind, and options given to the constructor."""

    kind = ""
    paper = ""  # the paper it follows
    changes = ""  # what was changed to make it multi-label
    # Raised whenever a change to the algorithm changes its answer for the same options: a summary on disk answers
    # only for the revision that wrote it (the request key holds it), so a resumed sweep computes it again.
    revision = 1

    def options(self) -> dict:
        """The options it was built with (public attributes; ``info``, the diagnostics of a run, left out)."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_") and k != "info"}


DEFENSES.base = Defense


class DataDefense(Defense):
    kind = "data"

    def suspicion(self, d: Defender) -> Detection:  # pragma: no cover - the hook
        raise NotImplementedError


CALIBRATIONS = ("split", "crossfit")
TIES = ("conservative", "random")
TIE_STREAM = 7919  # the Defender stream the ``ties: random`` draws come from


class InputDefense(Defense):
    """Scores test inputs; ``flag`` uses a threshold set at ``fpr`` on clean holdout images by :meth:`calibrate`.

    The holdout is split in two halves. :meth:`reference` (the first half) is what the method itself may use when
    it scores a test input (images to blend with, to paste onto, benign statistics). The threshold is a conformal
    quantile (:func:`fpr_threshold`) of clean holdout scores that no test image touches:

    * ``calibration: split`` (the default): the second half alone calibrates, scored exactly as a test input is
      (split conformal: the realised rate on new clean inputs is at most ``fpr`` in expectation).
    * ``calibration: crossfit``: both halves calibrate, the first scored with the second half as the reference.
      Twice the calibration images, so half the variance of the realised rate, but valid only where a score does
      not depend on its reference (a score normalised by the reference's statistics is not exchangeable between
      the halves; docs/results/defenses-tuning.md has the measurement). Meant for reference-free scores such as
      ``saliency``'s.
    """

    kind = "input"
    label = ""  # the registered name, for messages

    def __init__(self, fpr: float = 0.05, calibration: str = "split", ties: str = "random") -> None:
        one_of(self.label or type(self).__name__.lower(), "calibration", calibration, CALIBRATIONS)
        one_of(self.label or type(self).__name__.lower(), "ties", ties, TIES)
        self.fpr = fpr
        self.calibration_rule, self.ties = calibration, ties
        self._threshold = None
        self._clean = np.zeros(0)  # the sorted calibration scores, for ``ties: random``
        self._draws = None
        self._swapped = False  # True while the first half is scored with the second as the reference

    def options(self) -> dict:
        opts = super().options()
        opts["calibration"] = opts.pop("calibration_rule")  # ``calibration`` is the method below
        return opts

    def score(self, d: Defender, images) -> np.ndarray:  # pragma: no cover - the hook
        raise NotImplementedError

    def reference(self, d: Defender) -> tuple[np.ndarray, np.ndarray]:
        """The images (and labels) the method may use to score an input: the holdout's first half (the second
        while :meth:`calibrate` scores the first half under ``crossfit``)."""
        half = len(d.holdout_images) // 2
        rows = slice(half, len(d.holdout_images)) if self._swapped else slice(0, half)
        return np.asarray(d.holdout_images[rows]), d.holdout_labels[rows]

    def reference_tag(self) -> str:
        """Part of a cache key for anything computed from :meth:`reference`."""
        return "ref2" if self._swapped else "ref1"

    @staticmethod
    def calibration(d: Defender) -> np.ndarray:
        """The holdout's second half: calibration images scored with the first half as the reference."""
        half = len(d.holdout_images) // 2
        return np.asarray(d.holdout_images[half : len(d.holdout_images)])

    def calibration_scores(self, d: Defender) -> np.ndarray:
        """The clean scores the threshold is set on (see the class docstring)."""
        scores = [self.score(d, self.calibration(d))]
        half = len(d.holdout_images) // 2
        if self.calibration_rule == "crossfit" and half:
            self._swapped = True
            try:
                scores.append(self.score(d, np.asarray(d.holdout_images[0:half])))
            finally:
                self._swapped = False
        return np.concatenate(scores)

    def calibrate(self, d: Defender) -> float:
        """Set and return the flag threshold: the conformal ``fpr`` threshold (:func:`fpr_threshold`) of the
        clean holdout's scores (:meth:`calibration_scores`)."""
        scores = self.calibration_scores(d)
        self._threshold, self._calibrated_on = fpr_threshold(scores, self.fpr), len(scores)
        self._clean = np.sort(np.asarray(scores, np.float64))
        self._draws = d.rng(TIE_STREAM)  # ``ties: random``: drawn in the order ``flag`` is called
        return self._threshold

    @property
    def calibrated_on(self) -> int:
        """How many clean holdout scores the last :meth:`calibrate` set the threshold on (0 before)."""
        return getattr(self, "_calibrated_on", 0)

    def flag(self, scores: np.ndarray) -> np.ndarray:
        """Flag scores against the calibration (see ``ties`` in the class docstring)."""
        if self._threshold is None:
            raise RuntimeError("calibrate() first")
        if self.ties == "random":
            return smoothed_pvalues(self._clean, scores, self._draws) <= self.fpr
        return scores > self._threshold


def fpr_threshold(clean: np.ndarray, fpr: float) -> float:
    """The conformal threshold ``t``: a new clean score exchangeable with the ``clean`` ones is above ``t`` with
    probability at most ``fpr`` (and at least ``fpr − 1/(n+1)``).

    With n scores and m = ⌊(n+1)·fpr⌋ − 1, ``t`` is the (m+1)-th largest score: a score is flagged when at most
    m of the n clean scores are at least as high, i.e. when its conformal p-value (1 + #{clean ≥ s}) / (n + 1)
    is at most ``fpr``. Its expected false-positive rate is (m+1)/(n+1) ≤ fpr; at most m ≤ n·fpr of the clean
    scores themselves lie above it. (A quantile interpolated between two scores flags one image in n whenever
    n·fpr < 1; the (⌊n·fpr⌋+1)-th largest has an expected rate up to 1/(n+1) above nominal: 6.6% for 60 images
    at 5%.) ``inf`` when there is no score or m < 0 (n too small for fpr).
    """
    s = np.sort(np.asarray(clean, np.float64))
    m = int(np.floor((len(s) + 1) * fpr + 1e-9)) - 1
    if not len(s) or m < 0:
        return float("inf")
    return float(s[len(s) - m - 1]) if m < len(s) else float("-inf")


def smoothed_pvalues(clean: np.ndarray, scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Randomised conformal p-values of ``scores`` against the ``clean`` calibration scores:
    ``(#{clean > s} + U·(#{clean = s} + 1)) / (n + 1)``, ``U`` uniform on [0, 1) drawn from ``rng``, one per score.
    For a clean score exchangeable with the n clean ones, P(p ≤ α) = α exactly, whatever the ties."""
    c = np.sort(np.asarray(clean, np.float64))
    s = np.asarray(scores, np.float64)
    above = len(c) - np.searchsorted(c, s, side="right")
    equal = np.searchsorted(c, s, side="right") - np.searchsorted(c, s, side="left")
    return (above + rng.random(len(s)) * (equal + 1)) / (len(c) + 1)


class ModelDefense(Defense):
    kind = "model"

    def scan(self, d: Defender) -> Scan:  # pragma: no cover - the hook
        raise NotImplementedError


class Mitigation(Defense):
    """Either returns a repaired model (``repair``) or cleans inputs before the model sees them (``purify``); a
    mitigation with ``trains = True`` trains a model anew instead (``train``)."""

    kind = "mitigation"
    trains = False

    def train(self, d: Defender) -> tuple[nn.Module, np.ndarray, np.ndarray]:
        """A training-time defense: a model trained on ``d``'s training set, each sample's score (its loss,
        lower = more suspicious) and the positions the defense isolated."""
        raise NotImplementedError

    def repair(self, d: Defender) -> nn.Module | None:
        return None

    def purify(self, d: Defender, images: np.ndarray) -> np.ndarray:
        return images
