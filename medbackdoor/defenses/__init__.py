"""Backdoor defenses, multi-label from the start: cleanse the data, catch triggered inputs, scan the model, repair it.

Every defense is registered by name in :data:`DEFENSES` and subclasses one base of
:mod:`medbackdoor.defenses.base` (one hook each). Run one with ``medbackdoor defend RUN --method NAME`` or
:func:`medbackdoor.defenses.runner.defend`.
"""

from medbackdoor.defenses import (  # noqa: F401 - registers
    abl,
    activation_clustering,
    anp,
    februus,
    fine_pruning,
    ft_sam,
    i_bau,
    ibd_psc,
    label_audit,
    neural_cleanse,
    saliency,
    scale_up,
    sentinet,
    spectral,
    spectre,
    strip,
)
from medbackdoor.defenses.base import (
    DEFENSES,
    KINDS,
    DataDefense,
    Defender,
    Detection,
    Images,
    InputDefense,
    Mitigation,
    ModelDefense,
    Scan,
    Truth,
)

__all__ = ["DEFENSES", "KINDS", "DataDefense", "Defender", "Detection", "Images", "InputDefense", "Mitigation",
           "ModelDefense", "Scan", "Truth"]
