"""One epoch of training, and scoring arrays of images: the pieces the run driver calls."""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from medbackdoor.inference import is_channels_last, set_layout, to_input  # noqa: F401 - set_layout: the runner's
from medbackdoor.losses import bce_loss, class_weights, label_nll, masked_bce  # noqa: F401 - the runner's, ABL's
from medbackdoor.train.dist import SINGLE, Dist


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA when ``enabled``; nothing on CPU (keeps CPU runs exactly reproducible)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


@contextlib.contextmanager
def deterministic(enabled: bool = True):
    """``train.deterministic``: deterministic kernels only (``torch.use_deterministic_algorithms``), no cuDNN
    autotuning, and the cuBLAS workspace setting that CUDA needs for repeatable matrix products; restored on exit.

    An op without a deterministic kernel then raises instead of running, naming the op.
    """
    if not enabled:
        yield
        return
    import torch.backends.cudnn as cudnn

    saved = (torch.are_deterministic_algorithms_enabled(), cudnn.benchmark, cudnn.deterministic,
             os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    cudnn.benchmark, cudnn.deterministic = False, True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0])
        cudnn.benchmark, cudnn.deterministic = saved[1], saved[2]
        if saved[3] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


class GraphedStep:
    """``train.cuda_graph``: the whole training step (forward, loss, backward, optimizer) replayed as one CUDA graph.

    DenseNet-121 launches ~2,000 small kernels per step; on a fast GPU the CPU that issues them is the bottleneck.
    A graph issues them all with one call. Every batch is still trained on exactly once and in order: the first
    ``warmup`` batches are ordinary (eager) steps on a side stream, as capture requires; the next batch is copied
    into the graph's static input, captured and replayed. The graph is recaptured when the learning rate changes
    (``ReduceLROnPlateau`` bakes the new rate into a new graph) and a batch of another shape takes the eager step.

    The optimizer must be built with ``capturable=True``. The loss is ``loss`` (default :func:`masked_bce`; a task's
    :meth:`~medbackdoor.task.Task.graph_loss`: no host sync), so a graphed run equals an eager one up to float
    rounding, not bit for bit. CUDA only; not with DDP or compile.
    """

    def __init__(self, model: nn.Module, optimizer, *, amp: bool = True, weights=None, warmup: int = 3,
                 loss: Callable = masked_bce):
        device = next(model.parameters()).device
        if warmup < 1:
            raise ValueError("GraphedStep needs at least one eager warm-up step (the optimizer's state is created "
                             "there, outside the capture)")
        if device.type != "cuda":
            raise ValueError("train.cuda_graph needs a CUDA device")
        self.model, self.optimizer, self.amp, self.warmup, self.loss = model, optimizer, amp, warmup, loss
        self.device = device
        self.weights = None if weights is None else tuple(w.to(device) for w in weights)
        self.graph = None
        self.lrs = None
        self.eager_steps = 0
        self.captures = 0
        self.stream = torch.cuda.Stream(device)

    def _step(self, x, y) -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp, cache_enabled=False):
            logits = self.model(x)
        loss = self.loss(logits.float(), y, self.weights)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def _eager(self, x, y) -> torch.Tensor:
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            self.optimizer.zero_grad(set_to_none=True)
            loss = self._step(x, y)
        torch.cuda.current_stream(self.device).wait_stream(self.stream)
        self.eager_steps += 1
        return loss

    def _capture(self, x, y) -> None:
        self.graph = None
        self.static_x, self.static_y = x.clone(), y.clone()
        torch.cuda.synchronize(self.device)
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        # thread_local: the DataLoader's pin-memory thread keeps calling CUDA while a capture runs
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            self.static_loss = self._step(self.static_x, self.static_y)
        self.graph, self.lrs = graph, self._lrs()
        self.captures += 1

    def _lrs(self) -> tuple:
        return tuple(float(g["lr"]) for g in self.optimizer.param_groups)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One training step; the loss as a 0-d device tensor (read it before the next call)."""
        if self.eager_steps < self.warmup:
            return self._eager(x, y)
        if self.graph is not None and (x.shape != self.static_x.shape or y.shape != self.static_y.shape
                                       or x.stride() != self.static_x.stride()):
            return self._eager(x, y)
        if self.graph is None or self.lrs != self._lrs():
            self._capture(x, y)
        else:
            self.static_x.copy_(x)
            self.static_y.copy_(y)
        self.graph.replay()
        return self.static_loss.clone()


def augment(x: torch.Tensor, generator: torch.Generator, max_degrees: float = 5.0) -> torch.Tensor:
    """Random horizontal flip and a small rotation per image, drawn from ``generator`` (on the CPU)."""
    n = x.shape[0]
    flip = torch.rand(n, generator=generator) < 0.5
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(max_degrees)
    cos, sin = torch.cos(angle), torch.sin(angle)
    sign = torch.where(flip, -1.0, 1.0)
    theta = torch.stack([torch.stack([cos * sign, -sin, torch.zeros(n)], 1),
                         torch.stack([sin * sign, cos, torch.zeros(n)], 1)], 1).to(x)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False)


class Heartbeat:
    """Called once per batch; touches ``path`` when ``every`` seconds have passed since its last touch.

    The file's modification time shows a watcher (a sweep's executor) that the run still makes progress: it moves
    with batches, not with the clock, so a run stuck inside a batch stops touching it. ``path`` None: nothing.
    """

    def __init__(self, path: str | Path | None, every: float = 5.0) -> None:
        self.path, self.every = (None if path is None else Path(path)), every
        self.last = -math.inf

    def __call__(self) -> None:
        now = time.monotonic()
        if self.path is not None and now - self.last >= self.every:
            self.path.touch()
            self.last = now


def make_loader(dataset, batch_size: int, sampler, device: torch.device, workers: int = 0) -> DataLoader:
    """The training loader, built once per run: ``sampler`` (an :class:`~medbackdoor.train.dist.EpochSampler`)
    is re-seeded every epoch, so worker processes persist across epochs; pinned memory and prefetch on CUDA.

    ``batch_size`` is this process's share of the global batch. Images stay uint8 until they reach the device.
    """
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      drop_last=len(sampler) > batch_size, collate_fn=collate,
                      persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None,
                      pin_memory=device.type == "cuda")


@dataclass
class Step:
    """One training step's setting: the module it calls and its optimizer, on ``device``.

    Args:
        model: what the step calls (the model, or a DDP / compiled wrapper of it).
        optimizer: its optimizer.
        device: where the batches go.
        amp: bf16 autocast on CUDA.
        weights: class weights of the loss (:func:`class_weights`), or None.
        augment: random flip and rotation per image (:func:`augment`).
        loss_fn: ``loss_fn(logits, targets, weights)`` instead of :func:`bce_loss` (e.g. ABL's stages).
        graph: a :class:`GraphedStep` over the same model and optimizer: each step is a CUDA-graph replay.
        channels_last: the input layout (None: the model's, :func:`is_channels_last`).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    amp: bool = True
    weights: tuple | None = None
    augment: bool = False
    loss_fn: Callable | None = None
    graph: GraphedStep | None = None
    channels_last: bool | None = None


def train_epoch(step: Step, loader: DataLoader, epoch: int, dist: Dist = SINGLE, progress=None,
                heartbeat: Heartbeat | None = None) -> float:
    """Train one epoch; the sample order and augmentation depend only on (seed, epoch, rank).

    ``loader`` comes from :func:`make_loader`. Returns the mean loss over every image of every rank (of what
    ``step.loss_fn`` returns when it is set). With ``step.graph`` the loss is summed on the device, so no step
    waits for the GPU. ``progress.update(k)`` and ``heartbeat()`` are called after every batch.
    """
    sampler = loader.sampler
    sampler.set_epoch(epoch)
    generator = sampler.augment_generator()
    model, device = step.model, step.device
    channels_last = is_channels_last(model) if step.channels_last is None else step.channels_last
    model.train()
    total, count = 0.0, 0
    for batch in loader:
        x = to_input(batch["image"], device, channels_last)
        if step.augment:
            x = augment(x, generator)
        y = batch["labels"].to(device, non_blocking=True)
        if step.graph is not None:
            loss = step.graph(x, y).double() * len(y)
            total = loss if count == 0 else total + loss
        else:
            with autocast(device, step.amp):
                logits = model(x)
            loss = (step.loss_fn or bce_loss)(logits.float(), y, step.weights)
            step.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            step.optimizer.step()
            total += loss.item() * len(y)
        count += len(y)
        if progress is not None:
            progress.update(len(y) * dist.world)
        if heartbeat is not None:
            heartbeat()
    total = float(total)  # one device sync per epoch on the graph path
    total, count = dist.sum(total, count)
    return total / max(count, 1)


def collate(items: list[dict]) -> dict:
    return {"image": torch.from_numpy(np.stack([it["image"] for it in items])),
            "labels": torch.from_numpy(np.stack([it["labels"] for it in items]))}
