"""The model registry and the ``pretrained`` option (``none``, ``imagenet``, ``xrv:<name or path>`` or a local
state-dict path)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from medbackdoor._registry import Registry
from medbackdoor.errors import UserError
from medbackdoor.labels import LABELS, NUM_CLASSES
from medbackdoor.models.info import ModelInfo
from medbackdoor.models.xrv import accept_xrv_checkpoints, load_xrv

MODELS: Registry[nn.Module] = Registry("model", group="medbackdoor.models")  # any callable returning a module

XRV_PREFIX = "xrv:"
TIMM_PREFIX = "timm:"


def model_factory(arch: str):
    """The factory for ``arch``: a registered name, or ``timm:<name>`` (one line when timm is missing or does not
    know the name, or when the name is unknown)."""
    if arch.startswith(TIMM_PREFIX):
        from medbackdoor.models.timm_models import TimmModel, check_name

        name = check_name(arch)

        def timm_factory(num_classes: int = NUM_CLASSES, imagenet: bool = False, image_size: int | None = None,
                         **options) -> nn.Module:
            return TimmModel(name, num_classes=num_classes, imagenet=imagenet, image_size=image_size, **options)

        return timm_factory
    return MODELS.get(arch)


def arch_info(arch: str, options: Mapping | None = None) -> ModelInfo | None:
    """The metadata of ``arch`` built with ``options``, without building it where the model can say (a class
    ``info``, or a ``describe(**options)`` classmethod when the options change it); None for ``timm:`` models,
    whose metadata is read from the built model."""
    if arch.startswith(TIMM_PREFIX):
        model_factory(arch)  # timm installed and the name known, or one line
        return None
    factory = MODELS.get(arch)
    describe = getattr(factory, "describe", None)
    if callable(describe):
        return describe(**dict(options or {}))
    info = getattr(factory, "info", None)
    return info if isinstance(info, ModelInfo) else None


def create_model(arch: str = "densenet121", pretrained: str = "none", num_classes: int = NUM_CLASSES,
                 label_names: Sequence[str] | None = None, image_size: int | None = None,
                 options: Mapping | None = None) -> nn.Module:
    """Build a registered model (or a timm model, ``timm:<name>``).

    Args:
        arch: a registered model name (``densenet121``, ``resnet50``, ``vit_b_16``) or ``timm:<name>``.
        pretrained: ``none``; ``imagenet`` (torchvision's weights, or timm's); ``xrv:<name>`` or ``xrv:<path>`` (a
            TorchXRayVision chest X-ray DenseNet-121, see :mod:`medbackdoor.models.xrv`: the model switches to
            xrv's 1-channel input convention and its head rows are taken from xrv by label name); or the path of
            a state dict / one of our checkpoints.
        num_classes: outputs.
        label_names: the dataset's label names, one per output, used by ``xrv:`` to match xrv's outputs by name
            (default :data:`medbackdoor.labels.LABELS` when ``num_classes`` is 14).
        image_size: the input side in px (the run's ``image_size``), for models built for one size (a ViT's
            position embeddings); models that take any size ignore it.
        options: ``model.options``, checked against the model's constructor (one line for an unknown one).

    The model accepts, in ``load_state_dict``, checkpoints of an ``xrv:`` run even when built without the xrv
    file (it switches to the xrv input convention on seeing their 1-channel ``features.conv0``); build it before
    the optimizer. ``model.pretrained_info`` tells what an ``xrv:`` start mapped.
    """
    pretrained = str(pretrained)

    def build(imagenet: bool) -> nn.Module:
        given = {"num_classes": num_classes, "imagenet": imagenet, "image_size": image_size}
        if arch.startswith(TIMM_PREFIX):
            model = model_factory(arch)(**given, **dict(options or {}))
        else:
            model = MODELS.create_checked(arch, dict(options or {}), what=f"model.options ({arch})", given=given)
        return accept_xrv_checkpoints(model)

    if pretrained in ("none", "imagenet"):
        return build(pretrained == "imagenet")
    model = build(False)
    if pretrained.startswith(XRV_PREFIX):
        names = _label_names(num_classes, label_names)
        model.pretrained_info = load_xrv(model, pretrained[len(XRV_PREFIX):], names)
    else:
        load_state(model, Path(pretrained))
    return model


def _label_names(num_classes: int, label_names: Sequence[str] | None) -> tuple[str, ...]:
    if label_names is None:
        if num_classes != NUM_CLASSES:
            raise UserError(f"model.pretrained xrv: needs the dataset's label names for {num_classes} outputs")
        return LABELS
    names = tuple(str(n) for n in label_names)
    if len(names) != num_classes:
        raise UserError(f"{len(names)} label names for a model with {num_classes} outputs")
    return names


def load_state(model: nn.Module, path: Path) -> None:
    """Load a local state dict (``weights_only=True``: nothing is unpickled) into ``model``.

    Accepts our own checkpoints (a dict with key ``model``) and plain state dicts.
    """
    if not path.is_file():
        raise UserError(f"model.pretrained: {path} is neither none, imagenet, xrv:<name> nor an existing file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise UserError(f"cannot load weights from {path}: {str(exc).splitlines()[0]}") from None
    state = state.get("model", state) if isinstance(state, dict) else state
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # misshapen tensors: say which, on one line
        detail = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), "")
        raise UserError(f"weights in {path} do not fit the model: {detail or str(exc).splitlines()[0]}") from None
    if unexpected or len(missing) == len(model.state_dict()):
        raise UserError(f"weights in {path} do not fit the model ({len(unexpected)} unexpected keys)")
