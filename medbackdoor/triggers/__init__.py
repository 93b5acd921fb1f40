"""Triggers, registered by name. A new trigger is a :class:`Trigger` subclass with one method: ``pattern`` (a mask
and a pattern, stamped with Eq. 1) or ``transform`` (anything else)."""

from __future__ import annotations

import inspect
from typing import Any

from medbackdoor.triggers.adaptive import AdaptiveBlend, AdaptivePatch, ConditionalTrigger
from medbackdoor.triggers.base import TRIGGERS, Trigger, apply_trigger, from_unit, image_rng, to_unit
from medbackdoor.triggers.blend import BlendTrigger
from medbackdoor.triggers.frequency import FrequencyTrigger
from medbackdoor.triggers.label_combination import LabelCombination
from medbackdoor.triggers.patch import PatchTrigger
from medbackdoor.triggers.sig import SigTrigger
from medbackdoor.triggers.square import SquareTrigger
from medbackdoor.triggers.warp import WarpTrigger

TRIGGERS.register("square")(SquareTrigger)
TRIGGERS.register("patch")(PatchTrigger)
TRIGGERS.register("blend")(BlendTrigger)
TRIGGERS.register("sig")(SigTrigger)
TRIGGERS.register("frequency")(FrequencyTrigger)
TRIGGERS.register("warp")(WarpTrigger)
TRIGGERS.register("label-combination")(LabelCombination)
TRIGGERS.register("adaptive-blend")(AdaptiveBlend)
TRIGGERS.register("adaptive-patch")(AdaptivePatch)
TRIGGERS.register("conditional")(ConditionalTrigger)


def create_trigger(kind: str = "square", **options) -> Trigger:
    """Build a registered trigger by name; options go to its constructor (checked: one clear error for an unknown
    option or a value of the wrong type)."""
    return TRIGGERS.create_checked(kind, options, f"trigger {kind}")


SHARED_OPTIONS = ("size", "location", "value")  # the run config's ``trigger.size`` etc., for triggers that take them


def shared_defaults(kind: str) -> dict[str, Any]:
    """The trigger's own defaults for the :data:`SHARED_OPTIONS` it accepts (``{}`` for an unknown kind): what an
    unset ``trigger.size``, ``trigger.location`` or ``trigger.value`` means for this kind."""
    if kind not in TRIGGERS:
        return {}
    params = TRIGGERS.options(kind)
    return {k: params[k].default for k in SHARED_OPTIONS
            if k in params and params[k].default is not inspect.Parameter.empty}


__all__ = ["TRIGGERS", "AdaptiveBlend", "AdaptivePatch", "BlendTrigger", "ConditionalTrigger", "FrequencyTrigger",
           "LabelCombination", "PatchTrigger", "SigTrigger", "SquareTrigger", "Trigger", "WarpTrigger", "apply_trigger",
           "create_trigger", "from_unit", "image_rng", "shared_defaults", "to_unit", "SHARED_OPTIONS"]
