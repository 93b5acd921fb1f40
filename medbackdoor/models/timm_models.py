"""``model.arch: timm:<name>``: any model of PyTorch Image Models (timm), an optional extra (``medbackdoor[timm]``).

The model's metadata is read from timm itself, not written here per architecture:

* input: gray replicated to 3 channels and normalised with the model's ``pretrained_cfg`` mean and std;
* layers: for a transformer with ``blocks`` (ViT, DeiT, BEiT, EVA, …), the tokens entering the last block and the
  middle block (their ``norm1``: the head reads only the pooled tokens after the last block, see
  :mod:`medbackdoor.models.vit`) and the last block's MLP activation for pruning; for a network with stages, the
  last two entries of ``feature_info`` (``last``, ``middle``) and the last for pruning;
* layout: ``tokens`` (with ``num_prefix_tokens``) for transformers, ``nhwc`` where timm's ``output_fmt`` says so
  (Swin), else ``nchw``; ``min_size``: the last stage's ``reduction`` (or the patch size);
* norm: the kind of normalisation layer the model has (BatchNorm, else LayerNorm, else GroupNorm).

Transformers that take ``img_size`` are built at the run's ``image_size``; ``model.options`` reach
``timm.create_model`` as they are (e.g. ``drop_path_rate``). ``model.pretrained: imagenet`` asks timm for its
pretrained weights (downloaded by timm, from its hub, once).
"""

from __future__ import annotations

import torch
from torch import nn

from medbackdoor.errors import UserError
from medbackdoor.models.info import ModelInfo
from medbackdoor.models.inputs import GrayToRGB

PREFIX = "timm:"


def import_timm():
    """timm, or one line naming the extra to install."""
    try:
        import timm
    except ImportError:
        raise UserError("model.arch timm:<name> needs timm: pip install 'medbackdoor[timm]'") from None
    return timm


def check_name(arch: str) -> str:
    """The timm model name of ``timm:<name>``; one line when timm is missing or does not know it."""
    name = arch[len(PREFIX):]
    timm = import_timm()
    if not name or not timm.is_model(name):
        raise UserError(f"model.arch {arch}: timm has no model {name!r} (see timm.list_models())")
    return name


def _norm_kind(net: nn.Module) -> str:
    kinds = (("batch", nn.modules.batchnorm._BatchNorm), ("layer", nn.LayerNorm), ("group", nn.GroupNorm))
    for kind, cls in kinds:
        if any(isinstance(m, cls) for m in net.modules()):
            return kind
    return "none"


def describe_timm(net: nn.Module, prefix: str = "net.") -> ModelInfo:
    """The :class:`ModelInfo` of a built timm model (module names under ``prefix``)."""
    cfg = dict(getattr(net, "pretrained_cfg", None) or {})
    mean, std = cfg.get("mean", (0.485, 0.456, 0.406)), cfg.get("std", (0.229, 0.224, 0.225))
    words = (f"gray replicated to 3 channels, normalised with timm's pretrained_cfg mean {tuple(mean)} and std "
             f"{tuple(std)}")
    blocks = getattr(net, "blocks", None)
    if hasattr(net, "num_prefix_tokens") and isinstance(blocks, nn.Sequential | nn.ModuleList) and len(blocks):
        patch = getattr(getattr(net, "patch_embed", None), "patch_size", (16, 16))
        patch = int(patch[0] if isinstance(patch, tuple | list) else patch)
        n = len(blocks)
        has_act = hasattr(getattr(blocks[n - 1], "mlp", None), "act")
        act = f"{prefix}blocks.{n - 1}" + (".mlp.act" if has_act else "")
        return ModelInfo(layers={"last": f"{prefix}blocks.{n - 1}.norm1", "middle": f"{prefix}blocks.{n // 2}.norm1",
                                 "prune": act},
                         min_size=patch, size_multiple=patch, input=words, layout="tokens",
                         prefix_tokens=int(net.num_prefix_tokens), norm=_norm_kind(net))
    stages = [f for f in (getattr(net, "feature_info", None) or []) if isinstance(f, dict) and f.get("module")]
    if not stages:
        raise UserError(f"timm model {type(net).__name__} lists no feature_info: name its Grad-CAM layers by module")
    layout = "nhwc" if str(getattr(net, "output_fmt", "NCHW")).upper() == "NHWC" else "nchw"
    middle = stages[-2] if len(stages) > 1 else stages[-1]
    return ModelInfo(layers={"last": prefix + stages[-1]["module"], "middle": prefix + middle["module"],
                             "prune": prefix + stages[-1]["module"]},
                     min_size=int(stages[-1].get("reduction", 32)), input=words, layout=layout,
                     norm=_norm_kind(net))


def _create(timm, name: str, image_size: int | None, kwargs: dict) -> nn.Module:
    """``timm.create_model``, at ``image_size`` for the networks that take ``img_size`` (transformers)."""
    if image_size:
        try:
            return timm.create_model(name, img_size=image_size, **kwargs)
        except TypeError as exc:  # a network without img_size (CNNs)
            if "img_size" not in str(exc):
                raise
    return timm.create_model(name, **kwargs)


class TimmModel(nn.Module):
    """A timm model behind our input convention (gray in [0, 1]) and split (``forward_features``,
    ``forward_head(..., pre_logits=...)``, both timm's own).

    Args:
        name: the timm model name (``resnet18``, ``vit_small_patch16_224``, ``convnext_tiny``, …).
        num_classes: outputs (logits).
        imagenet: timm's pretrained weights (``pretrained=True``).
        image_size: the run's input side, given to transformers that take ``img_size``.
        options: passed to ``timm.create_model``.
    """

    def __init__(self, name: str, num_classes: int = 14, imagenet: bool = False, image_size: int | None = None,
                 **options) -> None:
        super().__init__()
        timm = import_timm()
        kwargs = dict(num_classes=num_classes, in_chans=3, pretrained=imagenet, **options)
        try:
            net = _create(timm, name, image_size, kwargs)
        except TypeError as exc:
            raise UserError(f"timm:{name}: {str(exc).splitlines()[0]} (model.options)") from None
        except Exception as exc:  # noqa: BLE001 - a failed download, an unknown name
            raise UserError(f"timm:{name}: {str(exc).splitlines()[0]}") from None
        self.name = name
        self.info = describe_timm(net)
        if image_size:
            self.info.check_size(int(image_size), f"timm:{name}")
        cfg = dict(getattr(net, "pretrained_cfg", None) or {})
        self.input = GrayToRGB(cfg.get("mean", (0.485, 0.456, 0.406)), cfg.get("std", (0.229, 0.224, 0.225)))
        self.net = net

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(self.input(x))

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.net.forward_head(features, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
