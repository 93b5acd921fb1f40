"""Images/s reading a training set through the preprocessing cache vs decoding the PNGs every time.

Generates an NIH-layout folder of 1024² PNGs (smooth radiograph-like pixels plus noise, so the files compress
like real ones), then measures in the same run:

* decode: read each PNG, convert to gray, resize to the model size (what a loader without a cache does);
* cache build: the one-off pass that fills the memory-mapped array (with worker processes);
* cache read: iterating the training split from the memory map.

Usage: ``python benchmarks/loader.py [--images 200] [--size 224] [--workers 2]``; prints the ratio.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from medbackdoor.data import NIHChestXray14, Preprocess, create_dataset
from medbackdoor.data.cache import build_cache, cache_path, load_images
from medbackdoor.data.preprocess import preprocess
from medbackdoor.poison import ImageSplit


def make_release(root: Path, n: int, side: int = 1024) -> None:
    synth = create_dataset("synthetic", n_images=n, source_size=256)
    rng = np.random.default_rng(0)
    rows = ["Image Index,Finding Labels,Patient ID,Patient Gender"]
    folder = root / "images_001" / "images"
    folder.mkdir(parents=True)
    for i in range(n):
        name = f"{i + 1:08d}_000.png"
        base = Image.fromarray(synth.read_source(i)).resize((side, side), Image.BICUBIC)
        pixels = np.clip(np.asarray(base, np.int16) + rng.integers(-4, 5, (side, side)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / name)
        rows.append(f"{name},No Finding,{i + 1},M")
    (root / "Data_Entry_2017_v2020.csv").write_text("\n".join(rows) + "\n")
    names = [r.split(",")[0] for r in rows[1:]]
    (root / "test_list.txt").write_text("\n".join(names[: n // 5]) + "\n")
    (root / "train_val_list.txt").write_text("\n".join(names[n // 5 :]) + "\n")


def rate(n: int, seconds: float) -> float:
    return n / max(seconds, 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3, help="passes over the training split for the readers")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "nih"
        print(f"generating {args.images} PNGs of 1024x1024 ...", flush=True)
        make_release(root, args.images)
        ds = NIHChestXray14(root, val_fraction=0.0)
        prep = Preprocess()
        train = ds.split_indices("train")
        start = time.perf_counter()
        for _ in range(args.epochs):
            for i in train:
                preprocess(ds.read_source(int(i)), args.size, prep)
        decode = rate(args.epochs * len(train), time.perf_counter() - start)
        info = build_cache(ds, args.size, prep, cache_path(ds, args.size, prep, Path(tmp) / "c"), args.workers,
                           progress=False)
        images = load_images(ds, args.size, prep, Path(tmp) / "c")
        split = ImageSplit(images, ds.labels, ds.patients, train)
        start = time.perf_counter()
        for _ in range(args.epochs):
            for k in range(len(split)):
                split[k]
        cached = rate(args.epochs * len(split), time.perf_counter() - start)
    print(f"decode PNG + resize to {args.size}px : {decode:10.1f} img/s")
    print(f"cache build ({args.workers} workers)      : {info['images_per_second']:10.1f} img/s (once)")
    print(f"read through cache             : {cached:10.1f} img/s")
    print(f"ratio cache / decode           : {cached / decode:10.1f}x")


if __name__ == "__main__":
    main()
