"""Training images/s: the whole pipeline against the model-only bound, measured in the same run.

* bound: the same model, optimizer, autocast and memory format, fed one random batch already on the device;
* pipeline: the run's own path: a uint8 memory-mapped cache → the poisoning wrapper (3×3 trigger, ρ = 0.4) →
  ``make_loader`` (persistent workers, pinned memory, prefetch on CUDA) → uint8 → float on the device →
  ``train_epoch``.

Both run ``--warmup`` steps first (compilation, cuDNN autotuning, worker start-up) and then ``--steps`` timed
steps. The ratio pipeline / bound says how much of the model's speed the data path keeps (goal ≥ 0.95).

Usage: ``python benchmarks/train_throughput.py --image-size 224 --batch-size 128 [--compile [--compile-mode M]]
[--cuda-graph] [--workers 8]``. ``--cuda-graph`` replays the whole step as one CUDA graph (``train.cuda_graph``),
in the bound and the pipeline alike.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from medbackdoor.inference import pick_device
from medbackdoor.models import create_model
from medbackdoor.poison import ImageSplit, PoisonedDataset
from medbackdoor.train.dist import EpochSampler
from medbackdoor.train.loop import GraphedStep, Step, autocast, bce_loss, make_loader, train_epoch
from medbackdoor.triggers import create_trigger


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bound(model, optimizer, device, args, channels_last: bool, graph=None) -> float:
    """Images/s of the training step alone: random inputs already on the device."""
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.rand(args.batch_size, 1, args.image_size, args.image_size, generator=g, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = (torch.rand(args.batch_size, 14, generator=g, device=device) < 0.1).float()
    model.train()

    def step():
        if graph is not None:
            graph(x, y).item()
            return
        with autocast(device, args.amp):
            logits = model(x)
        loss = bce_loss(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()  # the training loop reads the loss every step too

    for _ in range(args.warmup):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync(device)
    return args.steps * args.batch_size / (time.perf_counter() - t0)


def pipeline(model, optimizer, device, args, folder: Path, channels_last: bool, graph=None) -> float:
    """Images/s of ``train_epoch`` over a cached, poisoned training set (epoch 1 warms up, epoch 2 is timed)."""
    rng = np.random.default_rng(0)
    n_timed, n_warm = args.steps * args.batch_size, args.warmup * args.batch_size
    n = max(n_timed, n_warm)
    path = folder / "cache.npy"

    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, args.image_size, args.image_size))
    for lo in range(0, n, 256):
        out[lo : lo + 256] = rng.integers(0, 256, (min(256, n - lo), args.image_size, args.image_size), np.uint8)
    out.flush()
    del out
    images = np.load(path, mmap_mode="r")
    labels = (rng.random((n, 14)) < 0.1).astype(np.float32)
    base = ImageSplit(images, labels, np.arange(n).astype(str), np.arange(n))
    trigger = create_trigger("square", size=3, location="center", value=0.0)
    # "replace" keeps the epoch at exactly n images: every step is a full batch
    train = PoisonedDataset(base, trigger, fraction=0.4, target="Atelectasis", mode="replace", seed=0)
    timed = {}

    class Clock:
        """Progress hook: starts the clock at the first image of the timed epoch's first warm batch."""

        def __init__(self):
            self.seen = 0

        def update(self, k):
            self.seen += k
            if self.seen == args.batch_size:  # skip the first batch (the loader filling its queue)
                sync(device)
                timed["t0"] = time.perf_counter()

    loader = make_loader(train, args.batch_size, EpochSampler(len(train), 0), device, args.workers)
    step = Step(model, optimizer, device, amp=args.amp, channels_last=channels_last, graph=graph)
    train_epoch(step, loader, 1)  # warm-up
    t0 = time.perf_counter()
    clock = Clock()
    train_epoch(step, loader, 2, progress=clock)
    sync(device)
    end = time.perf_counter()
    start = timed.get("t0", t0)
    counted = n - args.batch_size if "t0" in timed else n
    return counted / (end - start)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=20, help="timed steps (pipeline: the timed epoch has this many)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--device", default="auto")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (train.compile)")
    p.add_argument("--compile-mode", default=None, help="torch.compile mode: reduce-overhead, max-autotune, ...")
    p.add_argument("--cuda-graph", action="store_true", help="the whole step as one CUDA graph (train.cuda_graph)")
    p.add_argument("--no-amp", dest="amp", action="store_false", help="fp32 instead of bf16 autocast (CUDA)")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    p.add_argument("--arch", default="densenet121", help="model.arch (densenet121, resnet50, vit_b_16, timm:NAME)")
    p.add_argument("--json", default=None, help="also append the result as one JSON line to this file")
    args = p.parse_args(argv)

    device = pick_device(args.device)
    torch.manual_seed(0)
    channels_last = args.channels_last and device.type == "cuda"
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    model = create_model(args.arch, "none", image_size=args.image_size).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    graphed = args.cuda_graph and device.type == "cuda"
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, capturable=graphed)
    step_model = torch.compile(model, mode=args.compile_mode) if args.compile else model
    graph = GraphedStep(model, optimizer, amp=args.amp) if graphed else None
    t0 = time.perf_counter()
    b = bound(step_model, optimizer, device, args, channels_last, graph)
    with tempfile.TemporaryDirectory() as tmp:
        pl = pipeline(step_model, optimizer, device, args, Path(tmp), channels_last, graph)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    result = {"device": name, "arch": args.arch, "image_size": args.image_size, "batch_size": args.batch_size,
              "compile": args.compile,
              "compile_mode": args.compile_mode, "cuda_graph": graphed,
              "amp_bf16": args.amp and device.type == "cuda", "channels_last": channels_last, "workers": args.workers,
              "bound_img_s": round(b, 1), "pipeline_img_s": round(pl, 1), "ratio": round(pl / b, 3),
              "seconds": round(time.perf_counter() - t0, 1), "torch": torch.__version__}
    print(f"{name} | {args.arch}, {args.image_size} px, batch {args.batch_size}, compile={args.compile}, "
          f"cuda_graph={graphed}, "
          f"bf16={result['amp_bf16']}, channels_last={channels_last}, workers={args.workers}")
    print(f"model-only bound {b:8.1f} img/s | pipeline {pl:8.1f} img/s | ratio {pl / b:.3f}")
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(result) + "\n")
    return result


if __name__ == "__main__":
    main()
