"""What the rest of the toolkit needs to know about a model, declared by the model itself (timm's ``default_cfg``
habit): an attribute ``info = ModelInfo(...)`` (a class attribute, or set per instance as the timm adapter does).
Grad-CAM, the pruning and normalisation-layer defenses, the feature-space defenses and the config checks read it;
no architecture's module names or tensor layouts are written anywhere else.

This module owns the three questions every consumer asks of a hooked layer or of the model:

* :func:`layer_name`: which module a role (``last``, ``middle``, ``prune``) names;
* :func:`to_maps` and :func:`channel_axis`: how a layer's output is laid out (B×C×H×W maps, B×H×W×C maps, or
  B×N×C tokens with ``prefix_tokens`` class/register tokens first) and where its channels are;
* :func:`feature_vector`: the pooled penultimate features (``forward_head(forward_features(x), pre_logits=True)``);
* :func:`norm_layers`: the affine normalisation layers (BatchNorm, or LayerNorm for a transformer) that ANP and
  IBD-PSC perturb and FT-SAM keeps still.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from medbackdoor.errors import UserError

LAYER_ROLES = ("last", "middle", "prune")
LAYOUTS = ("nchw", "nhwc", "tokens")
NORMS = ("batch", "layer", "group", "none")
NORM_TYPES: dict[str, tuple[type, ...]] = {
    "batch": (nn.modules.batchnorm._BatchNorm,),
    "layer": (nn.LayerNorm,),
    "group": (nn.GroupNorm,),
    "none": (),
}


@dataclass(frozen=True)
class ModelInfo:
    """A model's metadata.

    Args:
        layers: role → module name. ``last`` and ``middle``: the Grad-CAM layers (the final feature map, and one
            in the middle of the network); ``prune``: the module whose output channels fine-pruning prunes.
        min_size: the smallest ``image_size`` the network takes (its downsampling must leave a map).
        input: how gray images in [0, 1] become the network's input, in words (for the docs and the manifest).
        layout: how the declared layers' outputs are laid out: ``nchw`` (CNN maps), ``nhwc`` (maps with channels
            last, e.g. timm's Swin) or ``tokens`` (B×N×C, a vision transformer's sequence).
        prefix_tokens: with ``tokens``, how many leading tokens (class, register) are not image patches.
        norm: the kind of the model's normalisation layers (``batch``, ``layer``, ``group`` or ``none``): the
            layers the normalisation-layer defenses work on.
        size_multiple: ``image_size`` must be a multiple of this (a transformer's patch size), 1 for any.
    """

    layers: Mapping[str, str] = field(default_factory=dict)
    min_size: int = 1
    input: str = "gray in [0, 1], as is"
    layout: str = "nchw"
    prefix_tokens: int = 0
    norm: str = "batch"
    size_multiple: int = 1

    def __post_init__(self) -> None:
        unknown = sorted(set(self.layers) - set(LAYER_ROLES))
        if unknown:
            raise ValueError(f"unknown layer role {unknown[0]!r}; the roles are {', '.join(LAYER_ROLES)}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown layout {self.layout!r}; the layouts are {', '.join(LAYOUTS)}")
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; the kinds are {', '.join(NORMS)}")

    def check_size(self, image_size: int, arch: str) -> None:
        """One line (``UserError``) unless the model takes ``image_size`` px."""
        if image_size < self.min_size:
            raise UserError(f"image_size must be at least {self.min_size} ({arch}), got {image_size}")
        if image_size % self.size_multiple:
            raise UserError(f"image_size must be a multiple of {self.size_multiple} ({arch}: its patch size), got "
                            f"{image_size}")


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside ``torch.compile`` and DDP wrappers."""
    for attr in ("_orig_mod", "module"):  # OptimizedModule, DistributedDataParallel
        inner = getattr(model, attr, None)
        if isinstance(inner, nn.Module):
            model = inner
    return model


def model_info(model: nn.Module) -> ModelInfo | None:
    """The ``info`` a model declares (through ``torch.compile`` and DDP wrappers), or None."""
    info = getattr(unwrap(model), "info", None)
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


def channel_axis(model: nn.Module, output: torch.Tensor) -> int:
    """The dimension of a hooked layer's ``output`` that holds its channels (neurons): 1 for B×C×H×W maps and
    B×C vectors, the last for tokens and channels-last maps."""
    info = model_info(model)
    if output.ndim <= 2:
        return output.ndim - 1
    return -1 if info is not None and info.layout in ("nhwc", "tokens") else 1


def to_maps(model: nn.Module, output: torch.Tensor, input_size: tuple[int, int]) -> torch.Tensor:
    """A hooked layer's output as B×C×h×w maps (a view or a copy; gradients flow through it).

    ``nchw`` is returned as is; ``nhwc`` is permuted; ``tokens`` loses its ``prefix_tokens`` and its patches are
    laid back on their grid (h×w with the input's aspect ratio, from ``input_size``, the model input's H×W).
    """
    info = model_info(model)
    layout = info.layout if info is not None else "nchw"
    if layout == "nchw" or output.ndim == 4 and layout == "tokens":
        if output.ndim != 4:
            raise UserError(f"layer output of shape {tuple(output.shape)} is not B×C×H×W; name a layer with maps")
        return output
    if layout == "nhwc":
        return output.permute(0, 3, 1, 2)
    if output.ndim != 3:
        raise UserError(f"layer output of shape {tuple(output.shape)} is not B×N×C tokens; name a block's layer")
    patches = output[:, info.prefix_tokens:]
    n = patches.shape[1]
    h_in, w_in = input_size
    stride = math.sqrt(h_in * w_in / max(n, 1))
    h = max(1, round(h_in / stride))
    w = n // h
    if h * w != n:
        raise UserError(f"{n} patch tokens do not make a grid for a {h_in}×{w_in} input")
    return patches.transpose(1, 2).reshape(patches.shape[0], patches.shape[2], h, w)


def feature_vector(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The pooled penultimate features (the input of the classifier) of a batch, as float32 B×D.

    Models with timm's split use ``forward_head(forward_features(x), pre_logits=True)``; a model whose
    ``forward_head`` takes no ``pre_logits`` gets its ``forward_features`` maps averaged over space; any other model
    gives the input of its last ``nn.Linear``.
    """
    inner = unwrap(model)
    if hasattr(inner, "forward_features") and hasattr(inner, "forward_head"):
        if "pre_logits" in inspect.signature(inner.forward_head).parameters:
            return inner.forward_head(inner.forward_features(x), pre_logits=True).float().flatten(1)
        maps = inner.forward_features(x).float()
        return maps.mean((2, 3)) if maps.ndim == 4 else maps.flatten(1)
    captured = {}
    linear = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    handle = linear.register_forward_pre_hook(lambda _m, args: captured.setdefault("x", args[0]))
    try:
        model(x)
    finally:
        handle.remove()
    return captured["x"].float().flatten(1)


def norm_layers(model: nn.Module, who: str) -> list[tuple[str, nn.Module]]:
    """The model's affine normalisation layers of its declared kind (BatchNorm unless its ``info`` says
    otherwise), by name, in definition order; one line when it has none.

    A layer's neurons are its channels: ``weight`` and ``bias`` hold one scale and shift each."""
    info = model_info(model)
    kind = info.norm if info is not None else "batch"
    types = NORM_TYPES[kind]
    layers = [(n, m) for n, m in model.named_modules() if types and isinstance(m, types)
              and getattr(m, "weight", None) is not None and getattr(m, "bias", None) is not None]
    if not layers:
        raise UserError(f"{who} works on a model's affine normalisation layers and {type(unwrap(model)).__name__} "
                        "has none; choose a defense that does not need them (fine-pruning, ft-sam, i-bau)")
    return layers
