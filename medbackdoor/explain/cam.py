"""Class activation maps: Grad-CAM and Grad-CAM++ on any layer, batched, with hooks that always come off.

``BaseCAM`` does the plumbing (hooks, the backward pass, upsampling, normalisation); a method overrides one
hook, :meth:`BaseCAM.channel_weights`. Gradients are taken of the logit of the target class by default;
``score="probability"`` takes them of the sigmoid output, as the paper's code did (it saturates: a confident
prediction gives an all-zero map), or of the softmax for a single-label task.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medbackdoor._registry import Registry
from medbackdoor.errors import UserError
from medbackdoor.labels import label_index
from medbackdoor.models.info import layer_name, to_maps

SCORES = ("logit", "probability")
CAMS: Registry[type] = Registry("saliency method")


def resolve_layer(model: nn.Module, layer: str) -> nn.Module:
    """The module named ``layer``, or the one the model's :class:`~medbackdoor.models.info.ModelInfo` gives the
    role ``last`` / ``middle`` (DenseNet-121: the paper's two layers)."""
    name = layer_name(model, layer)
    modules = dict(model.named_modules())
    if name not in modules:
        raise UserError(f"model has no layer {layer!r}; use last, middle or one of its module names")
    return modules[name]


def as_targets(target, n: int, device) -> torch.Tensor:
    """One class index per image from an index, a name, or a per-image sequence or tensor of them."""
    if isinstance(target, torch.Tensor):
        values = target.flatten().tolist() if target.ndim else [int(target)] * n
    elif isinstance(target, (str, int)) or not isinstance(target, Sequence):
        values = [target] * n
    else:
        values = list(target)
    if len(values) != n:
        raise UserError(f"got {len(values)} targets for {n} images")
    return torch.tensor([label_index(v) for v in values], dtype=torch.long, device=device)


def as_images(images, device) -> torch.Tensor:
    """N×H×W or N×C×H×W, uint8 or float in [0, 1] → a new N×C×H×W float tensor on ``device`` (C = 1 for
    gray)."""
    x = images if isinstance(images, torch.Tensor) else torch.as_tensor(images)
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    x = x.to(device=device, dtype=torch.float32)
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.ndim != 4:
        raise UserError(f"images must be N×H×W or N×C×H×W, got shape {tuple(x.shape)}")
    return x.clone()


class BaseCAM:
    """Saliency at one layer of a model; use as a context manager so the hook is removed on exit.

    The layer's output is read as maps through the model's ``info`` (:func:`~medbackdoor.models.info.to_maps`):
    a vision transformer's tokens are laid back on their patch grid (the class token dropped), as
    pytorch-grad-cam's ``reshape_transform`` does.

    Args:
        model: a classifier returning logits.
        layer: a module name, or ``last`` / ``middle``: the layers the model's ``info`` declares.
        score: ``logit`` (default) or ``probability``: what the gradients are taken of.
        task: the run's :class:`~medbackdoor.task.Task`, whose activation gives the probability (None: a sigmoid
            per output, multi-label).
    """

    def __init__(self, model: nn.Module, layer: str = "last", score: str = "logit", task=None) -> None:
        if score not in SCORES:
            raise UserError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
        self.model, self.score, self.task = model, score, task
        self.module = resolve_layer(model, layer)
        self._handle = None
        self._activation: torch.Tensor | None = None
        self.map_size: tuple[int, int] | None = None  # the layer's spatial size, known after the first batch

    def channel_weights(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        """B×K weights of the K feature maps (the one hook to override)."""
        raise NotImplementedError

    def _hook(self, module, inputs, output):
        self._activation = output
        return output.clone()  # layers after this one may work in place; they change the clone, not ours

    def __enter__(self) -> BaseCAM:
        self._handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._activation = None

    def __call__(self, images, target, batch_size: int = 64) -> torch.Tensor:
        """N×H×W maps in [0, 1] at input resolution (each divided by its maximum; all-zero stays zero)."""
        if self._handle is None:
            with self:
                return self(images, target, batch_size)
        device = next(self.model.parameters()).device
        x = as_images(images, device)
        targets = as_targets(target, len(x), device)
        was_training = self.model.training
        self.model.eval()
        try:
            maps = [self._batch(x[i : i + batch_size], targets[i : i + batch_size])
                    for i in range(0, len(x), batch_size)]
        finally:
            self.model.train(was_training)
        return torch.cat(maps) if maps else x.new_zeros((0, *x.shape[-2:]))

    def _batch(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)  # our own copy: the graph exists even for frozen layers
            logits = self.model(x)
            if self.score == "probability" and self.task is not None:
                chosen = self.task.activation(logits).gather(1, targets[:, None]).squeeze(1)
            else:
                chosen = logits.gather(1, targets[:, None]).squeeze(1)
                if self.score == "probability":
                    chosen = torch.sigmoid(chosen)
            act = self._activation
            (grads,) = torch.autograd.grad(chosen.sum(), act)
        # B×C×h×w maps whatever the layer's layout (tokens laid back on the patch grid, channels-last permuted)
        size = tuple(x.shape[-2:])
        act, grads = (to_maps(self.model, t.detach(), size).float() for t in (act, grads))
        self.map_size = (int(act.shape[-2]), int(act.shape[-1]))
        weights = self.channel_weights(act, grads)
        cam = F.relu((weights[:, :, None, None] * act).sum(1, keepdim=True))
        cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False).squeeze(1)
        peak = cam.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
        return torch.where(peak > 1e-12, cam / peak, torch.zeros_like(cam))


@CAMS.register("gradcam")
class GradCAM(BaseCAM):
    """Grad-CAM (Selvaraju et al. 2017): each map weighted by its spatially averaged gradient."""

    def channel_weights(self, activations, gradients):
        return gradients.mean(dim=(2, 3))


@CAMS.register("gradcam++")
class GradCAMPlusPlus(BaseCAM):
    """Grad-CAM++ (Chattopadhay et al. 2018): positive gradients weighted by second-order terms."""

    def channel_weights(self, activations, gradients):
        g2, g3 = gradients**2, gradients**3
        denom = 2 * g2 + activations.sum(dim=(2, 3), keepdim=True) * g3
        alpha = g2 / torch.where(denom != 0, denom, torch.ones_like(denom))
        return (alpha * F.relu(gradients)).sum(dim=(2, 3))


def grad_cam(model: nn.Module, images, target, layer: str = "last", method: str = "gradcam",
             score: str = "logit", batch_size: int = 64) -> torch.Tensor:
    """Saliency maps N×H×W in [0, 1] at input resolution, on the model's device.

    Args:
        model: a classifier taking N×1×H×W images in [0, 1] and returning logits.
        images: N×H×W uint8, or N×H×W / N×1×H×W float in [0, 1]; never modified.
        target: a class index or name for every image, or one per image (sequence or tensor).
        layer: a module name, or ``last`` / ``middle``.
        method: a registered method (``gradcam``, ``gradcam++``).
        score: ``logit`` or ``probability`` (the paper's code; saturates on confident inputs).
    """
    with CAMS.get(method)(model, layer, score) as cam:
        return cam(images, target, batch_size)
