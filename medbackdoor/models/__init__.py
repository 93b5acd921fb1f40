"""Models, registered by name; each splits into ``forward_features`` and ``forward_head``."""

from medbackdoor.models.densenet import DenseNet121
from medbackdoor.models.registry import MODELS, create_model

__all__ = ["MODELS", "DenseNet121", "create_model"]
