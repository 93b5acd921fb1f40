"""Maps/s of batched Grad-CAM against a per-image loop: same model, same images, same layer.

Usage: ``python benchmarks/gradcam.py [--images 64] [--size 64] [--batch 32] [--layer middle]``; prints the ratio.
"""

from __future__ import annotations

import argparse
import time

import torch

from medbackdoor.explain import grad_cam
from medbackdoor.models import create_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--layer", default="middle")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = create_model().to(args.device).eval()
    images = torch.rand(args.images, 1, args.size, args.size, generator=torch.Generator().manual_seed(1))
    grad_cam(model, images[:2], 0, args.layer)  # warm-up
    start = time.perf_counter()
    batched = grad_cam(model, images, 0, args.layer, batch_size=args.batch)
    t_batched = time.perf_counter() - start
    start = time.perf_counter()
    looped = torch.cat([grad_cam(model, images[i : i + 1], 0, args.layer) for i in range(len(images))])
    t_loop = time.perf_counter() - start
    diff = (batched - looped).abs().max().item()
    print(f"device {args.device}, {args.images} images at {args.size}px, layer {args.layer}")
    print(f"per-image loop : {args.images / t_loop:8.1f} maps/s")
    print(f"batched ({args.batch:>3})  : {args.images / t_batched:8.1f} maps/s")
    print(f"ratio          : {t_loop / t_batched:8.1f}x   (max |difference| {diff:.2e})")


if __name__ == "__main__":
    main()
