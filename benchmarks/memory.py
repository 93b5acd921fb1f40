"""Peak memory of the data side of a run, against the size of its cache file.

Runs, in a fresh child process each, the data side of a run on the embedded synthetic set (default 20,000
images at 224 px): build (or reuse) the cache, poison the training split, one pass of the training loader, the
class-weight labels, and the evaluation sets (validation, clean and triggered test) scored by a tiny model. It
prints the child's peak RSS (``ru_maxrss``) beside the cache size. The memory-mapped cache pages that a pass
reads count in RSS, so the target is: peak RSS ≤ cache size + 1.5 GB.

Baseline, measured in the same run: ``eager``, what the previous code held in memory for the same data (every
training image stacked to read labels, the infected images in a dict, copies of the clean and triggered test
sets, the validation set stacked); and ``import``, a child that only imports torch and medbackdoor.

Usage: ``python benchmarks/memory.py [--images 20000] [--size 224] [--stage input] [--cache-dir DIR]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

GB = 1024**3


def _config(args):
    from medbackdoor.config import load_config

    return load_config(overrides=[
        "dataset.name=synthetic", f"dataset.options.n_images={args.images}",
        f"dataset.options.source_size={max(args.size, 64)}", f"image_size={args.size}",
        f"trigger.stage={args.stage}", "trigger.mode=append", "trigger.fraction=0.4", "trigger.location=random",
        "train.poisoned_val=false", f"cache_dir={args.cache_dir}"])


class Tiny:
    """A one-layer stand-in for the model: evaluation reads every image, the network costs nothing."""

    def __new__(cls):
        import torch

        return torch.nn.Sequential(torch.nn.Conv2d(1, 14, 8, stride=8), torch.nn.AdaptiveAvgPool2d(1),
                                   torch.nn.Flatten())


def streaming(args) -> dict:
    """The data side as a run does it now."""
    import torch
    from torch.utils.data import DataLoader

    from medbackdoor.data.views import ImageRows
    from medbackdoor.experiment import build_run_data
    from medbackdoor.inference import predict
    from medbackdoor.train.loop import class_weights, collate

    config = _config(args)
    data = build_run_data(config, workers=args.workers, progress=False)
    class_weights(data.train.labels_array())
    seen = 0
    for batch in DataLoader(data.train, batch_size=64, shuffle=False, collate_fn=collate):
        seen += len(batch["labels"])
    model, device = Tiny(), torch.device("cpu")
    for view in (ImageRows(data.images, data.val.indices), data.test.clean, data.test.triggered):
        predict(model, view, device, 128)
    return {"train_samples": seen, "test": len(data.test)}


def eager(args) -> dict:
    """What the previous code materialised for the same data (arrays in memory, not views)."""
    import numpy as np

    from medbackdoor.experiment import build_run_data
    from medbackdoor.train.loop import class_weights

    data = build_run_data(_config(args), workers=args.workers, progress=False)
    train = [data.train[i] for i in range(len(data.train))]
    held = [np.stack([s["image"] for s in train])]  # dataset_arrays(data.train), for the class weights
    class_weights(np.stack([s["labels"] for s in train]))
    del train
    held.append({int(p): data.train.infect(int(p))["image"] for p in data.train.order})  # precomputed infected
    held.append(np.asarray(data.images[data.val.indices]))  # the validation set stacked
    held.append(np.asarray(data.test.clean[0:len(data.test)]))  # clean test copy
    held.append(np.asarray(data.test.triggered[0:len(data.test)]))  # triggered test copy
    return {"held_gb": round(sum(a.nbytes if hasattr(a, "nbytes") else sum(v.nbytes for v in a.values())
                                 for a in held) / GB, 3)}


def imports(args) -> dict:
    import torch  # noqa: F401

    import medbackdoor.train  # noqa: F401
    return {}


def child(mode: str, args) -> None:
    start = time.perf_counter()
    info = {"imports": imports, "streaming": streaming, "eager": eager}[mode](args)
    info["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB
    info["seconds"] = round(time.perf_counter() - start, 1)
    print("RESULT " + json.dumps(info), flush=True)


def measure(mode: str, argv: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", mode, *argv], capture_output=True, text=True)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode or not lines:
        raise SystemExit(f"{mode} child failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1][7:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--stage", default="input", choices=("input", "source"))
    parser.add_argument("--workers", type=int, default=None, help="cache-building processes (default: CPU count)")
    parser.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "medbackdoor-bench"))
    parser.add_argument("--skip-eager", action="store_true", help="do not measure the eager baseline")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args)
        return
    argv = [f"--images={args.images}", f"--size={args.size}", f"--stage={args.stage}", f"--cache-dir={args.cache_dir}"]
    if args.workers is not None:
        argv.append(f"--workers={args.workers}")
    base = measure("imports", argv)
    first = measure("streaming", argv)  # builds the cache when it is not there yet
    run = measure("streaming", argv)  # a run on an existing cache (every run after the first)
    caches = sorted(Path(args.cache_dir).glob(f"synthetic-{args.size}px-*.npy"), key=os.path.getmtime)
    cache_gb = sum(p.stat().st_size for p in caches) / GB
    print(f"{args.images} synthetic images at {args.size} px, {args.stage} stage; cache files {cache_gb:.2f} GB")
    print(f"import only       peak RSS {base['peak_rss_gb']:.2f} GB")
    print(f"streaming (now), first run, cache built if absent: peak RSS {first['peak_rss_gb']:.2f} GB "
          f"({first['seconds']} s)")
    print(f"streaming (now), cache present: peak RSS {run['peak_rss_gb']:.2f} GB  ({run['train_samples']} training "
          f"samples, {run['test']} test images, {run['seconds']} s)")
    if not args.skip_eager:
        old = measure("eager", argv)
        print(f"eager (before)    peak RSS {old['peak_rss_gb']:.2f} GB  (arrays held: {old['held_gb']:.2f} GB)")
        print(f"ratio now / before: {run['peak_rss_gb'] / old['peak_rss_gb']:.2f}")
    headroom = max(run["peak_rss_gb"], first["peak_rss_gb"]) - cache_gb
    verdict = "meets" if headroom <= 1.5 else "misses"
    print(f"worst peak RSS − cache size = {headroom:.2f} GB: {verdict} the target (≤ 1.5 GB); "
          f"peak RSS / cache size = {(headroom + cache_gb) / max(cache_gb, 1e-9):.2f}")


if __name__ == "__main__":
    main()
