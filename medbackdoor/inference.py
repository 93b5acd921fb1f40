"""Running a trained model: the device, the memory layout, uint8 images to model inputs, sigmoid scores.

What every reader of a finished run needs (defenses, explanations, control scoring) without the training code.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: the first CUDA device when there is one, else the CPU; any other name as torch reads it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def set_layout(model: nn.Module, channels_last: bool) -> nn.Module:
    """Put the model's weights in channels_last (NHWC) or the default layout (``train.channels_last``); inputs
    follow the model (:func:`is_channels_last`). NHWC is faster on every device measured (benchmarks/layout.py)."""
    return model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def is_channels_last(model: nn.Module) -> bool:
    """Whether the model's conv weights are channels_last: a 4-D weight with more than one input channel and a
    kernel wider than 1 is contiguous in exactly one of the two layouts."""
    for p in model.parameters():
        if p.dim() == 4 and p.shape[1] > 1 and p.shape[2] * p.shape[3] > 1:
            return not p.is_contiguous()
    return False


def with_channels(x: torch.Tensor) -> torch.Tensor:
    """A batch of images with a channel axis: B×H×W (gray) → B×1×H×W; B×C×H×W is returned as it is."""
    return x.unsqueeze(1) if x.dim() == 3 else x


def to_input(images: torch.Tensor, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    """B×H×W (gray) or B×C×H×W (colour) uint8 → B×C×H×W float in [0, 1] on ``device`` (C = 1 for gray)."""
    x = with_channels(images.to(device, non_blocking=True).float().div_(255.0))
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@torch.no_grad()
def predict(model: nn.Module, images, device, batch_size: int = 128, dist=None,
            heartbeat=None, task=None) -> np.ndarray:
    """Probabilities N×C, in float32, for N×H×W (gray) or N×3×H×W (colour) uint8 images: sigmoid scores, or
    ``task``'s activation (a :class:`~medbackdoor.task.Task`: softmax for a single-label task).

    ``images`` is anything sliceable (an array, a memmap, or a lazy view such as
    :class:`~medbackdoor.data.views.ImageRows`); it is read ``batch_size`` images at a time. Scoring never runs
    under autocast: bf16 logits carry 8 mantissa bits and their ties change the AUROC. Under ``torchrun``
    (``dist``, a :class:`~medbackdoor.train.dist.Dist`) each rank scores its slice and every rank gets all N rows
    back, in order. ``heartbeat`` (a callable) is called after every batch.
    """
    model.eval()
    out = []
    channels_last = is_channels_last(model)
    part = dist.shard(len(images)) if dist is not None else range(len(images))
    for lo in range(part.start, part.stop, batch_size):
        hi = min(lo + batch_size, part.stop)
        x = to_input(torch.from_numpy(np.array(images[lo:hi])), device, channels_last)
        logits = model(x).float()
        out.append((torch.sigmoid(logits) if task is None else task.activation(logits)).cpu().numpy())
        if heartbeat is not None:
            heartbeat()
    classes = out[0].shape[1] if out else _num_outputs(model)
    scores = np.concatenate(out) if out else np.zeros((0, classes), np.float32)
    return dist.gather(scores, len(images)) if dist is not None else scores


def _num_outputs(model: nn.Module) -> int:
    linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linear[-1].out_features if linear else 14
