"""Data-parallel training on ``torchrun``: who this process is, the epoch sampler, and gathering scores.

``torchrun --nproc_per_node N -m medbackdoor run ...`` starts N processes with ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK`` set; :func:`from_env` turns them into a :class:`Dist` (a single process gets ``Dist()``, world 1,
and every function here then does exactly what the single-process code did before).

The design, in four rules:

* **Order is a function of the seed.** :class:`EpochSampler` draws one permutation of the whole training set
  from ``(seed, epoch)``, the same on every rank (with one process it is the permutation a
  ``RandomSampler`` seeded the same way draws), pads it to a multiple of the world size by wrapping, and gives
  rank r the positions ``r, r + N, r + 2N, ...`` (as ``DistributedSampler`` does).
* **The global batch stays ``train.batch_size``**: each rank takes ``batch_size / N`` images per step, and DDP
  averages the gradients, so one step sees the same number of images as one single-process step.
* **Evaluation is sharded and gathered**: each rank scores a contiguous slice of the test images, the slices
  are gathered in order on every rank, and every metric is then the single-process formula on all images.
* **Rank 0 alone writes files**; the others only compute.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch

from medbackdoor.errors import UserError
from medbackdoor.inference import pick_device


@dataclass(frozen=True)
class Dist:
    """This process's place in a data-parallel run (``world == 1``: a plain single-process run)."""

    world: int = 1
    rank: int = 0
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def sum(self, *values: float) -> list[float]:
        """Element-wise sum of ``values`` over all ranks (the values themselves on one process)."""
        if not self.enabled:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self._device())
        torch.distributed.all_reduce(t)
        return t.cpu().tolist()

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank (a small Python value: an int, a string, None)."""
        if not self.enabled:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0, device=self._device())
        return box[0]

    def shard(self, n: int) -> slice:
        """This rank's contiguous slice of ``n`` items for evaluation (the last ranks may get fewer or none)."""
        per = math.ceil(n / self.world) if n else 0
        return slice(min(self.rank * per, n), min((self.rank + 1) * per, n))

    def gather(self, part: np.ndarray, n: int) -> np.ndarray:
        """Concatenate every rank's ``part`` (from :meth:`shard` of ``n``) in rank order: the whole array."""
        if not self.enabled:
            return part
        per = math.ceil(n / self.world) if n else 0
        device = self._device()
        padded = torch.zeros((per, *part.shape[1:]), dtype=torch.float32, device=device)
        padded[: len(part)] = torch.from_numpy(np.ascontiguousarray(part, dtype=np.float32)).to(device)
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        torch.distributed.all_gather(parts, padded)
        return torch.cat(parts).cpu().numpy()[:n]

    def sync_buffers(self, module: torch.nn.Module) -> None:
        """Copy rank 0's buffers (BatchNorm running statistics) to every rank, so evaluation uses one model."""
        if self.enabled:
            for buffer in module.buffers():
                torch.distributed.broadcast(buffer, src=0)

    def _device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")

    def describe(self) -> dict:
        return {"world_size": self.world, "backend": self.backend}


SINGLE = Dist()  # the plain single-process run


def from_env() -> tuple[int, int, int]:
    """``(world, rank, local_rank)`` from the variables ``torchrun`` sets ((1, 0, 0) without them)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise UserError(f"bad torchrun environment (WORLD_SIZE/RANK/LOCAL_RANK): {exc}") from None
    return world, rank, local


def setup(device_name: str = "auto", backend: str = "auto") -> tuple[Dist, torch.device]:
    """Join the process group ``torchrun`` describes (if any) and pick this rank's device.

    Returns ``(Dist(), device)`` for a single process. Under ``torchrun`` with CUDA each rank takes the GPU
    ``LOCAL_RANK``; the backend is NCCL on CUDA and gloo on the CPU unless ``backend`` names one.
    """
    world, rank, local = from_env()
    device = pick_device(device_name)
    if world <= 1:
        return Dist(), device
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA device(s) visible")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    name = backend if backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(name)
    return Dist(world, rank, local, name), device


def teardown(dist: Dist) -> None:
    if dist.enabled and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


class EpochSampler(torch.utils.data.Sampler):
    """This rank's share of one seeded permutation per epoch; call :meth:`set_epoch` before each epoch.

    The permutation comes from ``torch.Generator().manual_seed(seed * 100_003 + epoch)``; after drawing it the
    generator is left in :attr:`generator` for the epoch's augmentation on rank 0 (other ranks get their own
    generator, :meth:`augment_generator`). With one process this is draw for draw what the single-process loop
    has always done.
    """

    def __init__(self, n: int, seed: int, dist: Dist | None = None):
        self.n, self.seed, self.dist = n, seed, dist or SINGLE
        self.epoch = 1
        self.generator = torch.Generator()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)

    def __len__(self) -> int:
        return math.ceil(self.n / self.dist.world)

    def __iter__(self):
        order = torch.randperm(self.n, generator=self.generator).tolist()
        if self.dist.world > 1:
            total = len(self) * self.dist.world
            order = (order * math.ceil(total / max(self.n, 1)))[:total]
            order = order[self.dist.rank :: self.dist.world]
        return iter(order)

    def augment_generator(self) -> torch.Generator:
        if self.dist.rank == 0:
            return self.generator
        return torch.Generator().manual_seed((self.seed * 100_003 + self.epoch) * 1_009 + self.dist.rank)
