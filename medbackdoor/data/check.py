"""Validate a dataset: every image decodes, the labels parse, splits are patient-disjoint."""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor

from tqdm.auto import tqdm

from medbackdoor.data.base import ChestXrayDataset
from medbackdoor.errors import UserError

CHUNK = 64


def _decode(dataset: ChestXrayDataset, indices: list[int]) -> list[tuple[str, str, tuple]]:
    out = []
    for i in indices:
        try:
            img = dataset.read_source(i)
            out.append((dataset.names[i], "", img.shape))
        except UserError as exc:
            out.append((dataset.names[i], str(exc), ()))
    return out


def check_dataset(dataset: ChestXrayDataset, workers: int | None = None, progress: bool = True) -> dict:
    """Decode every image; return :meth:`ChestXrayDataset.summary` plus ``corrupt`` and ``source_sizes``."""
    chunks = [list(range(i, min(i + CHUNK, len(dataset)))) for i in range(0, len(dataset), CHUNK)]
    workers = min(os.cpu_count() or 1, 8) if workers is None else workers
    results = []
    with tqdm(total=len(dataset), desc="decoding", unit="img", disable=None if progress else True, leave=False) as bar:
        if workers <= 0 or len(chunks) <= 1:
            for c in chunks:
                results += _decode(dataset, c)
                bar.update(len(c))
        else:
            with ProcessPoolExecutor(workers) as pool:
                for c, fut in zip(chunks, [pool.submit(_decode, dataset, c) for c in chunks]):
                    results += fut.result()
                    bar.update(len(c))
    summary = dataset.summary()
    summary["corrupt"] = [{"image": name, "error": err} for name, err, _ in results if err]
    sizes: dict[str, int] = {}
    for _, err, shape in results:
        if not err:
            key = "x".join(map(str, shape))
            sizes[key] = sizes.get(key, 0) + 1
    summary["source_sizes"] = sizes
    return summary
