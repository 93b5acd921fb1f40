"""What a task type means, in one place: multi-label, multi-class or binary classification.

A dataset declares its task type (:attr:`ChestXrayDataset.task_kind`); :func:`task_of` gives the :class:`Task`
for it and its label names. The task says how a model's outputs become probabilities, the training loss, what a
valid label row is, which poisoning label policies exist and what each writes, and which classes a score row
predicts.

Labels are always stored as N×C float32 rows, whatever the task: multi-hot for multi-label (each finding 0, 1 or
NaN for unknown), one-hot for single-label (exactly one 1, or a row of NaN for an unknown label). Binary is
single-label with two classes (two softmax outputs, so the number of labels is the number of outputs everywhere).

This module imports numpy, torch and the package's leaf modules only (the defenses and the training loop both use it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from medbackdoor.errors import UserError
from medbackdoor.labels import LABEL_POLICIES

TASK_KINDS = ("multilabel", "multiclass", "binary")


@dataclass(frozen=True)
class Task:
    """A task type and its label names (see the module docstring). Build one with :func:`task_of`."""

    kind: str
    label_names: tuple[str, ...]

    single_label: ClassVar[bool] = False
    # trigger.label policies: what a poisoned training sample's label becomes (see :meth:`infected`)
    policies: ClassVar[tuple[str, ...]] = ()

    @property
    def num_outputs(self) -> int:
        return len(self.label_names)

    def activation(self, logits: torch.Tensor) -> torch.Tensor:  # pragma: no cover - each kind's hook
        """The model's probabilities of its N×C logits."""
        raise NotImplementedError

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        """The negative log-likelihood of the label rows ``targets`` (N×C, NaN unknown), summed over each image's
        known labels and averaged over the images."""
        raise NotImplementedError

    def train_loss(self, logits: torch.Tensor, targets: torch.Tensor, weights=None) -> torch.Tensor:
        """The training step's loss, with the class weights of :meth:`class_weights` (or None)."""
        raise NotImplementedError  # pragma: no cover

    def graph_loss(self, logits: torch.Tensor, targets: torch.Tensor, weights=None) -> torch.Tensor:
        """:meth:`train_loss` without any host-side check (the form a CUDA graph can hold); ``weights`` already
        on the device."""
        raise NotImplementedError  # pragma: no cover

    def class_weights(self, labels: np.ndarray) -> tuple:  # pragma: no cover
        """``train.class_weights``: the weights :meth:`train_loss` takes, from the training labels."""
        raise NotImplementedError

    def val_loss(self, labels: np.ndarray, scores: np.ndarray) -> float:  # pragma: no cover
        """The validation loss of probabilities ``scores`` (what the learning-rate schedule watches)."""
        raise NotImplementedError

    def val_quality(self, labels: np.ndarray, scores: np.ndarray) -> float:  # pragma: no cover
        """The validation AUROC logged each epoch (``val_auroc``)."""
        raise NotImplementedError

    def check_labels(self, labels: np.ndarray, what: str = "labels") -> None:  # pragma: no cover
        """Raise :class:`UserError` (one line) unless ``labels`` are valid rows of this task."""
        raise NotImplementedError

    def repair_quality(self, labels: np.ndarray, scores: np.ndarray) -> float | None:  # pragma: no cover
        """What a repair's budget holds on clean judging images (:mod:`medbackdoor.defenses._holdout`); None
        when it cannot be computed on these labels."""
        raise NotImplementedError

    def target_loss(self, logits: torch.Tensor, target: int) -> torch.Tensor:  # pragma: no cover
        """The mean loss that pushes each image's output towards ``target`` (Neural Cleanse's trigger search)."""
        raise NotImplementedError

    def hits(self, logits: torch.Tensor, target: int) -> torch.Tensor:  # pragma: no cover
        """Per image, whether the output says ``target`` (bool)."""
        raise NotImplementedError

    def infected(self, labels: np.ndarray, target: int, policy: str) -> np.ndarray:  # pragma: no cover
        """The label row(s) a poisoned sample gets under ``policy`` (one of :attr:`policies`)."""
        raise NotImplementedError

    def predicted(self, scores: np.ndarray, threshold: float = 0.5) -> np.ndarray:  # pragma: no cover
        """N×C bool: the classes each score row predicts."""
        raise NotImplementedError

    def check_policy(self, policy: str) -> None:
        if policy not in self.policies:
            raise UserError(f"trigger.label must be one of {', '.join(self.policies)} for a {self.kind} task, "
                            f"got {policy!r}")

    def to_dict(self) -> dict:
        return {"kind": self.kind, "label_names": list(self.label_names)}


class MultiLabel(Task):
    """Independent findings: a sigmoid per output, the BCE summed over an image's known findings."""

    policies: ClassVar[tuple[str, ...]] = LABEL_POLICIES

    def activation(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        from medbackdoor.losses import label_nll

        return label_nll(logits, targets)

    def train_loss(self, logits: torch.Tensor, targets: torch.Tensor, weights=None) -> torch.Tensor:
        """The mean BCE over the known labels (:func:`~medbackdoor.losses.bce_loss`)."""
        from medbackdoor.losses import bce_loss

        return bce_loss(logits, targets, weights)

    def graph_loss(self, logits: torch.Tensor, targets: torch.Tensor, weights=None) -> torch.Tensor:
        from medbackdoor.losses import masked_bce

        return masked_bce(logits, targets, weights)

    def class_weights(self, labels: np.ndarray) -> tuple:
        from medbackdoor.losses import class_weights

        return class_weights(labels)

    def val_loss(self, labels: np.ndarray, scores: np.ndarray) -> float:
        """The mean BCE over the known labels."""
        p = np.clip(np.asarray(scores, np.float64), 1e-7, 1 - 1e-7)
        loss = -(labels * np.log(p) + (1 - labels) * np.log(1 - p))
        return float(np.nanmean(loss)) if np.isnan(loss).any() else float(loss.mean())

    def val_quality(self, labels: np.ndarray, scores: np.ndarray) -> float:
        """The micro AUROC."""
        from medbackdoor.metrics.multilabel import micro_auroc

        return micro_auroc(labels, scores)

    def repair_quality(self, labels: np.ndarray, scores: np.ndarray) -> float | None:
        """The micro AUROC over every known (image, finding) pair."""
        from medbackdoor.metrics.multilabel import micro_auroc_or_none

        return micro_auroc_or_none(labels, scores)

    def target_loss(self, logits: torch.Tensor, target: int) -> torch.Tensor:
        """BCE of the target's logit towards 1."""
        logit = logits[:, target].float()
        return F.binary_cross_entropy_with_logits(logit, torch.ones_like(logit))

    def hits(self, logits: torch.Tensor, target: int) -> torch.Tensor:
        """The target's sigmoid above 0.5."""
        return logits[:, target] > 0

    def check_labels(self, labels: np.ndarray, what: str = "labels") -> None:
        labels = np.asarray(labels, np.float32)
        known = labels[np.isfinite(labels)]
        if np.isinf(labels).any() or not np.isin(known, (0.0, 1.0)).all():
            raise UserError(f"{what} must be 0, 1 or NaN (unknown)")

    def infected(self, labels: np.ndarray, target: int, policy: str) -> np.ndarray:
        """``onehot``: the target's one-hot row (the paper: every real finding erased); ``add``: the image's own
        findings plus the target; ``keep``: its own labels (clean-label)."""
        from medbackdoor.labels import infected_label

        self.check_policy(policy)
        return infected_label(labels, target, policy)

    def predicted(self, scores: np.ndarray, threshold: float = 0.5) -> np.ndarray:
        """Every finding whose score reaches ``threshold``."""
        return np.asarray(scores) >= threshold


class SingleLabel(Task):
    """One class per image: a softmax over the outputs, cross-entropy."""

    single_label: ClassVar[bool] = True
    policies: ClassVar[tuple[str, ...]] = ("onehot", "all-to-all", "keep")

    def activation(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits.float(), dim=-1)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        from medbackdoor.losses import one_hot_classes

        known, classes = one_hot_classes(targets)
        per = F.cross_entropy(logits.float(), classes, reduction="none")
        return (per * known).sum() / max(len(targets), 1)

    def train_loss(self, logits: torch.Tensor, targets: torch.Tensor, weights=None) -> torch.Tensor:
        """The mean cross-entropy over the known rows (:func:`~medbackdoor.losses.ce_loss`)."""
        from medbackdoor.losses import ce_loss

        return ce_loss(logits, targets, weights)

    graph_loss = train_loss  # ce_loss makes no host-side check

    def class_weights(self, labels: np.ndarray) -> tuple:
        from medbackdoor.losses import single_label_weights

        return single_label_weights(labels)

    def val_loss(self, labels: np.ndarray, scores: np.ndarray) -> float:
        """The mean of −log p(true class) over the known rows."""
        labels = np.asarray(labels)
        known = np.isfinite(labels).all(1)
        if not known.any():
            return float("nan")
        p = np.clip(np.asarray(scores, np.float64)[known], 1e-7, 1.0)
        return float(-np.log(p[np.arange(known.sum()), labels[known].argmax(1)]).mean())

    def val_quality(self, labels: np.ndarray, scores: np.ndarray) -> float:
        """The macro one-vs-rest AUROC."""
        from medbackdoor.metrics.singlelabel import auroc_macro

        return auroc_macro(labels, scores)

    def repair_quality(self, labels: np.ndarray, scores: np.ndarray) -> float | None:
        """The accuracy (the share of images whose argmax is their class)."""
        from medbackdoor.metrics.singlelabel import accuracy

        value = accuracy(labels, scores)
        return None if np.isnan(value) else value

    def target_loss(self, logits: torch.Tensor, target: int) -> torch.Tensor:
        """Cross-entropy towards the target class."""
        return F.cross_entropy(logits.float(), torch.full((len(logits),), int(target), device=logits.device))

    def hits(self, logits: torch.Tensor, target: int) -> torch.Tensor:
        """The argmax is the target."""
        return logits.argmax(-1) == target

    def check_labels(self, labels: np.ndarray, what: str = "labels") -> None:
        labels = np.asarray(labels, np.float32)
        if labels.ndim != 2:
            raise UserError(f"{what} must be N×C one-hot rows, got shape {labels.shape}")
        known = np.isfinite(labels).all(1)
        partly = ~known & np.isfinite(labels).any(1)
        rows = labels[known]
        if partly.any() or not np.isin(rows, (0.0, 1.0)).all() or not (rows.sum(1) == 1).all():
            raise UserError(f"{what} of a {self.kind} task must be one-hot rows (exactly one 1; a row of NaN is "
                            "an unknown label)")

    def infected(self, labels: np.ndarray, target: int, policy: str) -> np.ndarray:
        """``onehot`` (all-to-one): the target class; ``all-to-all``: class y becomes (y + 1) mod C; ``keep``: the
        image's own class (clean-label)."""
        self.check_policy(policy)
        labels = np.array(labels, dtype=np.float32)
        if policy == "onehot":
            out = np.zeros_like(labels)
            out[..., target] = 1.0
            return out
        if policy == "all-to-all":
            return np.roll(labels, 1, axis=-1)
        return labels

    def predicted(self, scores: np.ndarray, threshold: float = 0.5) -> np.ndarray:
        """The argmax class of each row (``threshold`` is not used)."""
        scores = np.asarray(scores)
        out = np.zeros(scores.shape, bool)
        if scores.size:
            out[np.arange(len(scores)), scores.argmax(-1)] = True
        return out

    def encode(self, classes: np.ndarray) -> np.ndarray:
        """N class indices (−1: unknown) as N×C one-hot rows (NaN rows for unknown)."""
        classes = np.asarray(classes, np.int64)
        if classes.size and (classes.max() >= self.num_outputs or classes.min() < -1):
            raise UserError(f"class indices must be in 0..{self.num_outputs - 1} (or -1 for unknown)")
        out = np.zeros((len(classes), self.num_outputs), np.float32)
        out[np.arange(len(classes)), np.maximum(classes, 0)] = 1.0
        out[classes < 0] = np.nan
        return out


class Binary(SingleLabel):
    """Two classes (negative, positive), as a two-output softmax."""


_KINDS = {"multilabel": MultiLabel, "multiclass": SingleLabel, "binary": Binary}


def task_of(kind: str, label_names) -> Task:
    """The :class:`Task` of ``kind`` (one of :data:`TASK_KINDS`) over ``label_names``.

    Raises:
        UserError: an unknown kind, fewer than two classes for a single-label task, or not exactly two for binary.
    """
    if kind not in _KINDS:
        raise UserError(f"task must be one of {', '.join(TASK_KINDS)}, got {kind!r}")
    names = tuple(str(n) for n in label_names)
    if kind != "multilabel" and len(names) < 2:
        raise UserError(f"a {kind} task needs at least two classes, got {list(names)}")
    if kind == "binary" and len(names) != 2:
        raise UserError(f"a binary task has exactly two classes (negative, positive), got {list(names)}")
    return _KINDS[kind](kind, names)
