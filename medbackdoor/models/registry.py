"""The model registry and the ``pretrained`` option (``none``, ``imagenet``, ``xrv:<name or path>`` or a local
state-dict path)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from medbackdoor._registry import Registry
from medbackdoor.errors import UserError
from medbackdoor.labels import LABELS, NUM_CLASSES
from medbackdoor.models.xrv import accept_xrv_checkpoints, load_xrv

MODELS: Registry[nn.Module] = Registry("model")

XRV_PREFIX = "xrv:"


def create_model(arch: str = "densenet121", pretrained: str = "none", num_classes: int = NUM_CLASSES,
                 label_names: Sequence[str] | None = None) -> nn.Module:
    """Build a registered model.

    Args:
        arch: a registered model name (``densenet121``).
        pretrained: ``none``; ``imagenet`` (torchvision's weights); ``xrv:<name>`` or ``xrv:<path>`` (a
            TorchXRayVision chest X-ray DenseNet-121, see :mod:`medbackdoor.models.xrv`: the model switches to
            xrv's 1-channel input convention and its head rows are taken from xrv by label name); or the path of
            a state dict / one of our checkpoints.
        num_classes: outputs.
        label_names: the dataset's label names, one per output, used by ``xrv:`` to match xrv's outputs by name
            (default :data:`medbackdoor.labels.LABELS` when ``num_classes`` is 14).

    The model accepts, in ``load_state_dict``, checkpoints of an ``xrv:`` run even when built without the xrv
    file (it switches to the xrv input convention on seeing their 1-channel ``features.conv0``); build it before
    the optimizer. ``model.pretrained_info`` tells what an ``xrv:`` start mapped.
    """
    factory = MODELS.get(arch)
    pretrained = str(pretrained)
    if pretrained in ("none", "imagenet"):
        return accept_xrv_checkpoints(factory(num_classes=num_classes, imagenet=pretrained == "imagenet"))
    model = accept_xrv_checkpoints(factory(num_classes=num_classes, imagenet=False))
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
