"""Saved predictions: an ``.npz`` with ``y_true``, ``score_clean``, ``score_triggered`` (N×C) and ``target``."""

from __future__ import annotations

import os
import zipfile

import numpy as np

from medbackdoor._io import atomic_path
from medbackdoor.errors import UserError

KEYS = ("y_true", "score_clean", "score_triggered", "target")


def save_predictions(path: str | os.PathLike, y_true, score_clean, score_triggered, target: int, **extra) -> None:
    """Write a predictions file atomically (extra arrays, such as dataset rows, are kept too).

    ``y_true`` is stored as uint8, or as float32 when it holds unknown (NaN) labels."""
    y = np.asarray(y_true, np.float32)
    y = y if np.isnan(y).any() else y.astype(np.uint8)
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, y_true=y, score_clean=np.asarray(score_clean),
                                score_triggered=np.asarray(score_triggered), target=np.int64(target), **extra)


def load_predictions(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read and validate a predictions file (never unpickles: ``allow_pickle=False``).

    Raises:
        UserError: missing file, not an npz, missing keys, or inconsistent shapes.
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise UserError(f"predictions file {path} does not exist") from None
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise UserError(f"cannot read predictions file {path}: {exc}") from None
    lacking = [k for k in KEYS if k not in data]
    if lacking:
        raise UserError(f"{path} lacks key(s) {', '.join(lacking)}; expected {', '.join(KEYS)}")
    shape = data["y_true"].shape
    if len(shape) != 2 or data["score_clean"].shape != shape or data["score_triggered"].shape != shape:
        raise UserError(f"{path}: y_true, score_clean and score_triggered must be N×C arrays of one shape")
    target = int(data["target"])
    if not 0 <= target < shape[1]:
        raise UserError(f"{path}: target {target} is outside 0..{shape[1] - 1}")
    data["target"] = np.int64(target)
    return data
