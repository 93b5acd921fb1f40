"""The preprocessing cache: every image decoded, cropped and resized once, kept as a uint8 memory-mapped array.

One file per (dataset fingerprint, resolution, preprocessing), so it is shared by every run and seed that uses
the same data, and rebuilt when the source files, the table or the preprocessing change (the key is a hash of
all three). The array is written to a temporary file and renamed into place when complete, so an interrupted
build never leaves a cache that looks finished, and it is built under a file lock, so processes that need the same
cache at once (``sweep --jobs N``) build it once and all read the same bytes.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from filelock import FileLock
from tqdm.auto import tqdm

from medbackdoor._io import atomic_path, write_json
from medbackdoor.data.base import ChestXrayDataset
from medbackdoor.data.preprocess import Preprocess, preprocess
from medbackdoor.errors import UserError

CACHE_VERSION = 1
CHUNK = 64


def default_cache_dir() -> Path:
    """``$MEDBACKDOOR_CACHE`` if set, else ``$XDG_CACHE_HOME/medbackdoor`` (``~/.cache/medbackdoor``)."""
    if os.environ.get("MEDBACKDOOR_CACHE"):
        return Path(os.environ["MEDBACKDOOR_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "medbackdoor"


def image_shape(dataset: ChestXrayDataset, size: int) -> tuple[int, ...]:
    """The shape of one preprocessed image of ``dataset``: ``(size, size)`` for gray, ``(3, size, size)`` for RGB."""
    channels = int(getattr(dataset, "channels", 1))
    return (size, size) if channels == 1 else (channels, size, size)


def cache_key(dataset: ChestXrayDataset, size: int, prep: Preprocess) -> str:
    spec = {"v": CACHE_VERSION, "data": dataset.fingerprint(), "size": size, "prep": prep.as_dict()}
    if image_shape(dataset, size) != (size, size):
        spec["shape"] = list(image_shape(dataset, size))
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def cache_path(dataset: ChestXrayDataset, size: int, prep: Preprocess, cache_dir: str | os.PathLike | None = None
               ) -> Path:
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / f"{dataset.name}-{size}px-{cache_key(dataset, size, prep)}.npy"


def load_images(dataset: ChestXrayDataset, size: int, prep: Preprocess | None = None,
                cache_dir: str | os.PathLike | None = None, workers: int | None = None,
                progress: bool = True) -> np.ndarray:
    """All images of ``dataset`` preprocessed to ``size``×``size``, as a read-only N×size×size uint8 memmap
    (N×3×size×size for an RGB dataset).

    Builds the cache file on first use (in ``workers`` processes; 0 builds in this process) and reuses it after.

    Raises:
        UserError: an image cannot be decoded (the message names the file).
    """
    prep = prep or Preprocess()
    path = cache_path(dataset, size, prep, cache_dir)
    ensure_cache(dataset, size, prep, path, workers, progress)
    return np.load(path, mmap_mode="r")


def lock_for(path: Path) -> FileLock:
    """The inter-process lock that guards building ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path) + ".lock")


def ensure_cache(dataset: ChestXrayDataset, size: int, prep: Preprocess, path: Path, workers: int | None = None,
                 progress: bool = True) -> bool:
    """Build the cache at ``path`` unless it exists; True when this call built it.

    Holds :func:`lock_for` while checking and building: a second process waits for the first and then reuses
    its file instead of building the same cache again.
    """
    if path.exists():
        return False
    with lock_for(path):
        if path.exists():
            return False
        build_cache(dataset, size, prep, path, workers, progress)
        return True


def build_cache(dataset: ChestXrayDataset, size: int, prep: Preprocess, path: Path, workers: int | None = None,
                progress: bool = True) -> dict:
    """Write the cache array to ``path`` atomically; returns timing info (also saved beside it as JSON)."""
    start = time.perf_counter()
    write_memmap(path, dataset, range(len(dataset)), size, prep, workers=workers, progress=progress,
                 desc=f"caching {dataset.name} at {size}px")
    seconds = time.perf_counter() - start
    info = {"images": len(dataset), "size": size, "preprocess": prep.as_dict(), "seconds": round(seconds, 3),
            "images_per_second": round(len(dataset) / max(seconds, 1e-9), 1), "fingerprint": dataset.fingerprint()}
    write_json(path.with_suffix(".json"), info)
    return info


def write_memmap(path: Path, dataset: ChestXrayDataset, indices, size: int, prep: Preprocess, transform=None,
                 workers: int | None = 0, progress: bool = False, desc: str = "preprocessing") -> None:
    """Preprocess ``indices`` (after ``transform(source, index)``) straight into a ``.npy`` at ``path``, atomically.

    Blocks go to disk as they are made, so memory stays flat whatever the number of images.
    """
    indices = list(indices)
    with atomic_path(path, suffix=".npy") as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                        shape=(len(indices), *image_shape(dataset, size)))
        for lo, block in _map_chunks(dataset, indices, size, prep, workers, progress, desc, transform):
            out[lo : lo + len(block)] = block
        out.flush()
        del out


def preprocess_indices(dataset: ChestXrayDataset, indices, size: int, prep: Preprocess, transform=None,
                       workers: int | None = 0, progress: bool = False, desc: str = "preprocessing") -> np.ndarray:
    """Read, optionally ``transform(source, index)``, and preprocess the given images; K×size×size uint8
    (K×3×size×size for an RGB dataset)."""
    indices = list(indices)
    out = np.empty((len(indices), *image_shape(dataset, size)), np.uint8)
    for lo, block in _map_chunks(dataset, indices, size, prep, workers, progress, desc, transform):
        out[lo : lo + len(block)] = block
    return out


def _work(dataset, indices, size, prep, transform) -> np.ndarray:
    out = np.empty((len(indices), *image_shape(dataset, size)), np.uint8)
    for k, i in enumerate(indices):
        src = dataset.read_source(int(i))
        if transform is not None:
            src = transform(src, int(i))
        image = preprocess(src, size, prep)
        if image.shape != out.shape[1:]:
            raise UserError(f"{dataset.name}: image {i} preprocesses to shape {image.shape}, expected "
                            f"{out.shape[1:]} (dataset.channels is {getattr(dataset, 'channels', 1)})")
        out[k] = image
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
            # At most 2 chunks per worker in flight, and each result dropped once yielded: memory stays at a few
            # blocks however many images there are (holding every future would hold every block).
            pending = collections.deque()
            todo = iter(chunks)
            for c in itertools.islice(todo, 2 * workers):
                pending.append(pool.submit(_work, dataset, c, size, prep, transform))
            while pending:
                block = pending.popleft().result()
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append(pool.submit(_work, dataset, nxt, size, prep, transform))
                yield offset, block
                offset += len(block)
                bar.update(len(block))
                del block
    bar.close()
