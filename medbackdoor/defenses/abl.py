"""``abl``: Anti-Backdoor Learning, a training-time defense: train the run's config again with ABL's stages.

Li, Lyu, Koren, Lyu, Li and Ma, "Anti-Backdoor Learning: Training Clean Models on Poisoned Data", NeurIPS 2021.

``medbackdoor defend RUN --method abl`` trains a new model of the run's architecture with the run's training
recipe on the defender's training set as trained (its pixels and labels; nothing else of the run), with ABL's
stages (:func:`medbackdoor.train.abl.fit_abl`): LGA epochs that make the fastest-learned samples stand out, the
isolation of the lowest-loss share of the training set, ordinary epochs on the rest, and unlearning epochs that
ascend the loss on the isolated samples. The summary gives the run's metric columns before (the defended run's
checkpoint) and after (the model ABL trained) and, as ``detection``, how well the isolation found the poisoned
samples: AUROC of minus the isolation loss, and the precision and recall of the isolated set.

The epochs: the run's own ``train.epochs`` for the isolation and training stages (``isolation_epochs`` of them
with LGA), then ``unlearn_epochs`` more. The paper trains 20 LGA epochs and 60 more of 100 on CIFAR-10 (5 of
unlearning at lr 5e-4). The training seed is the defender's.

Multi-label changes: see :mod:`medbackdoor.train.abl` (a sample's loss is its BCE summed over the findings, so
γ = 0.5 keeps the paper's meaning).
"""

from __future__ import annotations

import dataclasses

from medbackdoor.defenses.base import DEFENSES, Defender, Mitigation
from medbackdoor.errors import UserError


@DEFENSES.register("abl")
class ABL(Mitigation):
    """Anti-Backdoor Learning (Li et al., NeurIPS 2021): LGA isolation, training on the rest, unlearning.

    Args:
        gamma: the LGA threshold on a batch's mean summed BCE (the paper: 0.5).
        isolation_ratio: the share of the training set isolated (the paper: 0.01; the default's provenance is in
            docs/results/defenses-tuning.md).
        isolation_epochs: LGA epochs at the start of the run's epochs.
        unlearn_epochs: epochs of loss ascent on the isolated samples, after the run's epochs (the paper: 5).
        unlearn_lr: their learning rate (the paper: 5e-4).
    """

    paper = "Li et al. 2021, Anti-Backdoor Learning: Training Clean Models on Poisoned Data"
    changes = ("a sample's loss is its BCE summed over the findings (for isolation and for γ); the step follows "
               "the run's own loss times the LGA sign; the run's epoch budget and training recipe")
    trains = True  # the runner calls train() instead of repair()

    def __init__(self, gamma: float = 0.5, isolation_ratio: float = 0.05, isolation_epochs: int = 1,
                 unlearn_epochs: int = 5, unlearn_lr: float = 5e-4) -> None:
        for ok, message in [(gamma >= 0, f"abl gamma must be 0 or more, got {gamma}"),
                            (0 < isolation_ratio < 1, f"abl isolation_ratio must be in (0, 1), got {isolation_ratio}"),
                            (isolation_epochs >= 1, f"abl isolation_epochs must be at least 1, got {isolation_epochs}"),
                            (unlearn_epochs >= 0, f"abl unlearn_epochs must be 0 or more, got {unlearn_epochs}"),
                            (unlearn_lr > 0, f"abl unlearn_lr must be positive, got {unlearn_lr}")]:
            if not ok:
                raise UserError(message)
        self.gamma, self.isolation_ratio, self.isolation_epochs = gamma, isolation_ratio, isolation_epochs
        self.unlearn_epochs, self.unlearn_lr = unlearn_epochs, unlearn_lr

    def train(self, d: Defender):
        """A model trained anew with ABL's stages on ``d``'s training set; its isolation losses and positions."""
        from medbackdoor.config import AblConfig
        from medbackdoor.train.abl import fit_abl

        if d.training is None or d.new_model is None:
            raise UserError("abl trains a model: the defender has no training recipe")
        abl = AblConfig(enabled=True, gamma=self.gamma, isolation_ratio=self.isolation_ratio,
                        isolation_epochs=self.isolation_epochs, unlearn_epochs=self.unlearn_epochs,
                        unlearn_lr=self.unlearn_lr)
        epochs = d.training.epochs + self.unlearn_epochs
        if self.isolation_epochs >= d.training.epochs:
            raise UserError(f"abl: {self.isolation_epochs} isolation epochs leave no training epoch of the run's "
                            f"{d.training.epochs}")
        tc = dataclasses.replace(d.training, epochs=epochs, seed=d.seed)
        return fit_abl(d.new_model, d.train_images, d.train_labels, (d.holdout_images, d.holdout_labels), tc, abl,
                       d.device, d.task)
