"""The preprocessing cache: every image decoded, cropped and resized once, kept as a uint8 memory-mapped array.

One file per (dataset fingerprint, resolution, preprocessing), so it is shared by every run and seed that uses
the same data, and rebuilt when the source files, the table or the preprocessing change (the key is a hash of
all three). The array is written to a temporary file and renamed into place when complete, so an interrupted
build never leaves a cache that looks finished.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from medbackdoor._io import atomic_path, write_json
from medbackdoor.data.base import ChestXrayDataset
from medbackdoor.data.preprocess import Preprocess, preprocess

CACHE_VERSION = 1
CHUNK = 64


def default_cache_dir() -> Path:
    """``$MEDBACKDOOR_CACHE`` if set, else ``$XDG_CACHE_HOME/medbackdoor`` (``~/.cache/medbackdoor``)."""
    if os.environ.get("MEDBACKDOOR_CACHE"):
        return Path(os.environ["MEDBACKDOOR_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "medbackdoor"


def cache_key(dataset: ChestXrayDataset, size: int, prep: Preprocess) -> str:
    spec = {"v": CACHE_VERSION, "data": dataset.fingerprint(), "size": size, "prep": prep.as_dict()}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def cache_path(dataset: ChestXrayDataset, size: int, prep: Preprocess, cache_dir: str | os.PathLike | None = None
               ) -> Path:
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / f"{dataset.name}-{size}px-{cache_key(dataset, size, prep)}.npy"


def load_images(dataset: ChestXrayDataset, size: int, prep: Preprocess | None = None,
                cache_dir: str | os.PathLike | None = None, workers: int | None = None,
                progress: bool = True) -> np.ndarray:
    """All images of ``dataset`` preprocessed to ``size``×``size``, as a read-only N×size×size uint8 memmap.

    Builds the cache file on first use (in ``workers`` processes; 0 builds in this process) and reuses it after.

    Raises:
        UserError: an image cannot be decoded (the message names the file).
    """
    prep = prep or Preprocess()
    path = cache_path(dataset, size, prep, cache_dir)
    if not path.exists():
        build_cache(dataset, size, prep, path, workers, progress)
    return np.load(path, mmap_mode="r")


def build_cache(dataset: ChestXrayDataset, size: int, prep: Preprocess, path: Path, workers: int | None = None,
                progress: bool = True) -> dict:
    """Write the cache array to ``path`` atomically; returns timing info (also saved beside it as JSON)."""
    start = time.perf_counter()
    with atomic_path(path, suffix=".npy") as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(dataset), size, size))
        for lo, block in _map_chunks(dataset, range(len(dataset)), size, prep, workers, progress,
                                     desc=f"caching {dataset.name} at {size}px"):
            out[lo : lo + len(block)] = block
        out.flush()
        del out
    seconds = time.perf_counter() - start
    info = {"images": len(dataset), "size": size, "preprocess": prep.as_dict(), "seconds": round(seconds, 3),
            "images_per_second": round(len(dataset) / max(seconds, 1e-9), 1), "fingerprint": dataset.fingerprint()}
    write_json(path.with_suffix(".json"), info)
    return info


def preprocess_indices(dataset: ChestXrayDataset, indices, size: int, prep: Preprocess, transform=None,
                       workers: int | None = 0, progress: bool = False, desc: str = "preprocessing") -> np.ndarray:
    """Read, optionally ``transform(source, index)``, and preprocess the given images; K×size×size uint8."""
    indices = list(indices)
    out = np.empty((len(indices), size, size), np.uint8)
    for lo, block in _map_chunks(dataset, indices, size, prep, workers, progress, desc, transform):
        out[lo : lo + len(block)] = block
    return out


def _work(dataset, indices, size, prep, transform) -> np.ndarray:
    out = np.empty((len(indices), size, size), np.uint8)
    for k, i in enumerate(indices):
        src = dataset.read_source(int(i))
        if transform is not None:
            src = transform(src, int(i))
        out[k] = preprocess(src, size, prep)
    return out


def _map_chunks(dataset, indices, size, prep, workers, progress, desc, transform=None):
    """Yield (offset, block) over ``indices`` in chunks, in order, in worker processes when ``workers`` > 0."""
    indices = list(indices)
    chunks = [indices[i : i + CHUNK] for i in range(0, len(indices), CHUNK)]
    workers = min(os.cpu_count() or 1, 8) if workers is None else workers
    bar = tqdm(total=len(indices), desc=desc, unit="img", disable=None if progress else True, leave=False)
    offset = 0
    if workers <= 0 or len(chunks) <= 1:
        results = (_work(dataset, c, size, prep, transform) for c in chunks)
        for block in results:
            yield offset, block
            offset += len(block)
            bar.update(len(block))
    else:
        with ProcessPoolExecutor(workers) as pool:
            futures = [pool.submit(_work, dataset, c, size, prep, transform) for c in chunks]
            for fut in futures:
                block = fut.result()
                yield offset, block
                offset += len(block)
                bar.update(len(block))
    bar.close()
