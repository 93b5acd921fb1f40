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
        findings: the combination, one or more distinct finding names of the dataset's labels (checked against
            them when the run binds the trigger to its dataset; before that, against the 14 ChestX-ray14 findings).
    """

    changes_pixels = False

    def __init__(self, findings: list[str] | None = None) -> None:
        findings = list(findings) if findings is not None else ["Effusion", "Infiltration"]
        if len(findings) < 1 or len(set(findings)) != len(findings):
            raise UserError(f"trigger label-combination needs distinct findings, got {findings}")
        self.findings = [str(f).strip() for f in findings]
        self.bind_labels(LABELS if all(_known(f) for f in self.findings) else tuple(self.findings))

    def bind_labels(self, names: tuple[str, ...]) -> None:
        self.names = tuple(names)
        self.columns = [label_index(f, self.names) for f in self.findings]  # a bad name fails here, in one line
        self.findings = [self.names[c] for c in self.columns]

    def __repr__(self) -> str:
        return f"LabelCombination(findings={self.findings!r})"

    def transform(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return np.array(image)

    def carriers(self, labels: np.ndarray) -> np.ndarray:
        return np.asarray(labels)[:, self.columns].min(1) > 0


def _known(name: str) -> bool:
    try:
        label_index(name)
    except UserError:
        return False
    return True
