"""What the rest of the toolkit needs to know about a model, declared by the model itself (timm's ``default_cfg``
habit): a class attribute ``info = ModelInfo(...)``. Grad-CAM, the pruning defenses and the config checks read it;
no architecture's module names are written anywhere else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from torch import nn

from medbackdoor.errors import UserError

LAYER_ROLES = ("last", "middle", "prune")


@dataclass(frozen=True)
class ModelInfo:
    """A model's metadata.

    Args:
        layers: role → module name. ``last`` and ``middle``: the Grad-CAM layers (the final feature map, and one
            in the middle of the network); ``prune``: the module whose output channels fine-pruning prunes.
        min_size: the smallest ``image_size`` the network takes (its downsampling must leave a map).
        input: how gray images in [0, 1] become the network's input, in words (for the docs and the manifest).
    """

    layers: Mapping[str, str] = field(default_factory=dict)
    min_size: int = 1
    input: str = "gray in [0, 1], as is"

    def __post_init__(self) -> None:
        unknown = sorted(set(self.layers) - set(LAYER_ROLES))
        if unknown:
            raise ValueError(f"unknown layer role {unknown[0]!r}; the roles are {', '.join(LAYER_ROLES)}")


def model_info(model: nn.Module) -> ModelInfo | None:
    """The ``info`` a model declares (through ``torch.compile`` and DDP wrappers), or None."""
    for attr in ("_orig_mod", "module"):  # OptimizedModule, DistributedDataParallel
        inner = getattr(model, attr, None)
        if isinstance(inner, nn.Module):
            model = inner
    info = getattr(model, "info", None)
    return info if isinstance(info, ModelInfo) else None


def layer_name(model: nn.Module, layer: str) -> str:
    """The module name for ``layer``: a role the model declares (``last``, ``middle``, ``prune``) or a module name.

    One line (``UserError``) when ``layer`` is a role the model does not declare.
    """
    info = model_info(model)
    if info is not None and layer in info.layers:
        return info.layers[layer]
    if layer in LAYER_ROLES and layer not in dict(model.named_modules()):
        raise UserError(f"{type(model).__name__} declares no {layer!r} layer (its ModelInfo); name a module instead")
    return layer
