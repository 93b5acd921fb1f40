"""Training and scoring images/s in the two memory layouts (``train.channels_last``), measured in one process.

The same DenseNet-121 (or ``--arch``) from the same seed, one fixed batch of gray images in [0, 1] on the
device; a training step is forward, BCE loss, backward and Adam, as in ``train_epoch``; a scoring step is
``predict``'s forward under ``no_grad``. The layouts are timed alternately, ``--rounds`` times, so that a slow
patch of the machine hits both; each prints its best round and the ratio channels_last / contiguous.

Usage: ``python benchmarks/layout.py [--image-size 64] [--batch-size 32] [--threads 2] [--steps 8]``.
"""

from __future__ import annotations

import argparse
import time

import torch

from medbackdoor.inference import pick_device, set_layout
from medbackdoor.models import create_model
from medbackdoor.train.loop import bce_loss


def images_per_second(model, x, y, steps: int, train: bool) -> float:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3) if train else None

    def step():
        if train:
            model.train()
            loss = bce_loss(model(x).float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss.item()
        else:
            model.eval()
            with torch.no_grad():
                torch.sigmoid(model(x).float()).cpu()

    step()  # warm-up: kernel choice, allocator
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    return steps * len(x) / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="densenet121")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(args.batch_size, 1, args.image_size, args.image_size, generator=g)
    y = (torch.rand(args.batch_size, 14, generator=g) < 0.1).float().to(device)
    print(f"{args.arch}, {args.image_size} px, batch {args.batch_size}, {args.threads} threads, {device}")
    for train in (True, False):
        best = {False: 0.0, True: 0.0}
        for _ in range(args.rounds):
            for channels_last in (False, True):
                torch.manual_seed(0)
                model = set_layout(create_model(args.arch, "none", 14).to(device), channels_last)
                x = x0.to(device)
                x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
                best[channels_last] = max(best[channels_last], images_per_second(model, x, y, args.steps, train))
        what = "train" if train else "score"
        print(f"{what}: contiguous {best[False]:7.1f} img/s, channels_last {best[True]:7.1f} img/s, "
              f"ratio {best[True] / best[False]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
