"""The model registry and the ``pretrained`` option (``none``, ``imagenet`` or a local state-dict path)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from medbackdoor._registry import Registry
from medbackdoor.errors import UserError
from medbackdoor.labels import NUM_CLASSES

MODELS: Registry[nn.Module] = Registry("model")


def create_model(arch: str = "densenet121", pretrained: str = "none", num_classes: int = NUM_CLASSES) -> nn.Module:
    """Build a registered model; ``pretrained`` is ``none``, ``imagenet`` or a path to a state dict."""
    factory = MODELS.get(arch)
    if pretrained in ("none", "imagenet"):
        return factory(num_classes=num_classes, imagenet=pretrained == "imagenet")
    model = factory(num_classes=num_classes, imagenet=False)
    load_state(model, Path(pretrained))
    return model


def load_state(model: nn.Module, path: Path) -> None:
    """Load a local state dict (``weights_only=True``: nothing is unpickled) into ``model``.

    Accepts our own checkpoints (a dict with key ``model``) and plain state dicts.
    """
    if not path.is_file():
        raise UserError(f"model.pretrained: {path} is neither none, imagenet nor an existing file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise UserError(f"cannot load weights from {path}: {str(exc).splitlines()[0]}") from None
    state = state.get("model", state) if isinstance(state, dict) else state
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or len(missing) == len(model.state_dict()):
        raise UserError(f"weights in {path} do not fit the model ({len(unexpected)} unexpected keys)")
