"""Triggers, registered by name. A new trigger is a :class:`Trigger` subclass with one method, ``pattern``."""

from __future__ import annotations

from medbackdoor._registry import Registry
from medbackdoor.triggers.base import Trigger, apply_trigger, image_rng
from medbackdoor.triggers.square import SquareTrigger

TRIGGERS: Registry[Trigger] = Registry("trigger")
TRIGGERS.register("square")(SquareTrigger)


def create_trigger(kind: str = "square", **options) -> Trigger:
    """Build a registered trigger by name; options go to its constructor."""
    return TRIGGERS.create(kind, **options)


__all__ = ["TRIGGERS", "SquareTrigger", "Trigger", "apply_trigger", "create_trigger", "image_rng"]
