"""Atomic file writes: write to a temporary file in the same folder, then ``os.replace`` it into place."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from medbackdoor.errors import UserError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False, default=_jsonable) + "\n")


def read_json(path: str | os.PathLike) -> dict:
    """A JSON object from a file; ``{}`` when the file is missing or not valid JSON (e.g. a run never started)."""
    try:
        data = json.loads(Path(path).read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_rows(path: str | os.PathLike, rows: list[dict]) -> None:
    """A CSV with one row per dict (columns from the first), floats with 6 significant digits, atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    write_text(path, buf.getvalue())


def save_figure(fig: Any, folder: str | os.PathLike, stem: str, formats: tuple[str, ...] = ("png", "pdf")) -> None:
    """Save a matplotlib figure as ``folder/stem.<format>`` for each format, each atomically."""
    for ext in formats:
        with atomic_path(Path(folder) / f"{stem}.{ext}", suffix=f".{ext}") as tmp:
            fig.savefig(tmp, format=ext, dpi=150)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def plain(value: Any) -> Any:
    """``json.dumps``'s ``default`` for records that must always be written: numpy scalars and arrays as numbers and
    lists, anything else as its ``str``."""
    return value.tolist() if hasattr(value, "tolist") else str(value)


def read_positions(path: str) -> np.ndarray:
    """A text file of training-sample positions (as trained), one per line, ``#`` comments (``train.drop``,
    ABL's isolation)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"positions file {p} does not exist")
    values = []
    for n, line in enumerate(p.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            values.append(int(line))
        except ValueError:
            raise UserError(f"positions file {p} line {n} is not a sample position: {line!r}") from None
    return np.asarray(values, np.int64)


def for_display(image):
    """An image as matplotlib and Pillow show it: H×W stays (gray), a C×H×W colour image becomes H×W×C."""
    import numpy as np

    image = np.asarray(image)
    return np.ascontiguousarray(image.transpose(1, 2, 0)) if image.ndim == 3 else image
