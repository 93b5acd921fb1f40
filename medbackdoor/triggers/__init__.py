"""Triggers, registered by name. A new trigger is a :class:`Trigger` subclass with one method: ``pattern`` (a mask
and a pattern, stamped with Eq. 1) or ``transform`` (anything else)."""

from __future__ import annotations

from medbackdoor._registry import Registry
from medbackdoor.triggers.base import Trigger, apply_trigger, from_unit, image_rng, to_unit
from medbackdoor.triggers.blend import BlendTrigger
from medbackdoor.triggers.frequency import FrequencyTrigger
from medbackdoor.triggers.label_combination import LabelCombination
from medbackdoor.triggers.patch import PatchTrigger
from medbackdoor.triggers.sig import SigTrigger
from medbackdoor.triggers.square import SquareTrigger
from medbackdoor.triggers.warp import WarpTrigger

TRIGGERS: Registry[Trigger] = Registry("trigger")
TRIGGERS.register("square")(SquareTrigger)
TRIGGERS.register("patch")(PatchTrigger)
TRIGGERS.register("blend")(BlendTrigger)
TRIGGERS.register("sig")(SigTrigger)
TRIGGERS.register("frequency")(FrequencyTrigger)
TRIGGERS.register("warp")(WarpTrigger)
TRIGGERS.register("label-combination")(LabelCombination)


def create_trigger(kind: str = "square", **options) -> Trigger:
    """Build a registered trigger by name; options go to its constructor (checked: one clear error for an unknown
    option or a value of the wrong type)."""
    return TRIGGERS.create_checked(kind, options, f"trigger {kind}")


__all__ = ["TRIGGERS", "BlendTrigger", "FrequencyTrigger", "LabelCombination", "PatchTrigger", "SigTrigger",
           "SquareTrigger", "Trigger", "WarpTrigger", "apply_trigger", "create_trigger", "from_unit", "image_rng",
           "to_unit"]
