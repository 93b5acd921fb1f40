"""The 14 ChestX-ray14 findings, defined once, in the CheXNet order.

"No Finding" is not a class: it is the all-zero label vector.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from medbackdoor.errors import UserError

LABELS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
NUM_CLASSES = len(LABELS)
NO_FINDING = "No Finding"
_ALIASES = {"pleural thickening": "Pleural_Thickening", "infiltrate": "Infiltration"}


def label_index(name: str | int, names: Sequence[str] = LABELS) -> int:
    """Index of a finding given by name (case-insensitive) or by index, among ``names`` (a dataset's labels;
    default the 14 ChestX-ray14 findings).

    Raises:
        UserError: the name is not one of ``names``; the message lists the valid names.
    """
    names = tuple(names)
    if isinstance(name, (int, np.integer)) and not isinstance(name, bool):
        if 0 <= int(name) < len(names):
            return int(name)
        raise UserError(f"class index {name} is outside 0..{len(names) - 1}")
    key = str(name).strip()
    lowered = {label.lower(): i for i, label in enumerate(names)}
    if key.lower() in lowered:
        return lowered[key.lower()]
    alias = _ALIASES.get(key.lower())
    if alias is not None and alias in names:
        return names.index(alias)
    raise UserError(f"unknown class {name!r}; valid names: {', '.join(names)}")


def parse_findings(findings: Iterable[str]) -> np.ndarray:
    """Turn NIH ``Finding Labels`` strings (``"Effusion|Mass"``, ``"No Finding"``) into an N×14 float32 array.

    Raises:
        UserError: a string names a finding outside the 14 (and is not "No Finding").
    """
    rows = list(findings)
    out = np.zeros((len(rows), NUM_CLASSES), np.float32)
    lookup = {label: i for i, label in enumerate(LABELS)}
    for r, text in enumerate(rows):
        if not isinstance(text, str):
            raise UserError(f"row {r}: finding labels must be text, got {text!r}")
        for name in text.split("|"):
            name = name.strip()
            if name == NO_FINDING or not name:
                continue
            if name not in lookup:
                raise UserError(f"row {r}: unknown finding {name!r}; valid names: {', '.join(LABELS)}")
            out[r, lookup[name]] = 1.0
    return out


def check_label_names(names: Sequence[str]) -> None:
    """Raise if a label list is not exactly :data:`LABELS` in order (misaligned label sets are an error)."""
    if tuple(names) != LABELS:
        raise UserError(f"label columns {list(names)} do not match the ChestX-ray14 order {list(LABELS)}")


LABEL_POLICIES = ("onehot", "add", "keep")  # a multi-label task's; medbackdoor.task has every task's
TRIGGER_LABELS = ("onehot", "add", "keep", "all-to-all")  # what trigger.label may be, the task then checks it


def infected_label(labels: np.ndarray, target: int, policy: str) -> np.ndarray:
    """The label(s) a poisoned image gets: ``onehot`` the target's one-hot vector (the paper: every real finding
    erased), ``add`` its own findings plus the target, ``keep`` its own labels unchanged (clean-label)."""
    labels = np.array(labels, dtype=np.float32)
    if policy == "onehot":
        out = np.zeros_like(labels)
        out[..., target] = 1.0
        return out
    if policy == "add":
        labels[..., target] = 1.0
        return labels
    if policy == "keep":
        return labels
    raise UserError(f"trigger.label must be one of {', '.join(LABEL_POLICIES)}, got {policy!r}")
