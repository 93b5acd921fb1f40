"""A label-only backdoor: the trigger is a combination of findings; no pixel changes."""

from __future__ import annotations

import numpy as np

from medbackdoor.errors import UserError
from medbackdoor.labels import LABELS, label_index
from medbackdoor.triggers.base import Trigger


class LabelCombination(Trigger):
    """Clean-image backdoor on a multi-label model (after Chen et al., ICLR 2023, "Clean-image backdoor").

    The trigger is a set of co-occurring findings: a training image that has all of them gets the target class
    added to its labels (``trigger.label: add``) and its pixels are not touched. At test time the images that
    naturally carry the combination and lack the target are the "triggered" ones: ASR is the share of them whose
    target score reaches p; AUROC-TT scores them against their labels with the target added (what the attacker
    trained for), AUROC-TN against their true labels; the mixed-ε AUROC is not defined (no trigger to mix in).

    Args:
        findings: the combination, one or more distinct finding names of the 14.
    """

    changes_pixels = False

    def __init__(self, findings: list[str] | None = None) -> None:
        findings = list(findings) if findings is not None else ["Effusion", "Infiltration"]
        if len(findings) < 1 or len(set(findings)) != len(findings):
            raise UserError(f"trigger label-combination needs distinct findings, got {findings}")
        self.findings = [LABELS[label_index(f)] for f in findings]

    def transform(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return np.array(image)

    def carriers(self, labels: np.ndarray) -> np.ndarray:
        columns = [label_index(f) for f in self.findings]
        return np.asarray(labels)[:, columns].min(1) > 0
