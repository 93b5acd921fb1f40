"""Build ``medbackdoor/data/assets/nih_sample.npz``, the bundled ``nih-sample`` dataset, from real NIH images.

Reads the two real NIH ChestX-ray14 subsets kept beside the repository (``../shared/data`` by default):

* ``nih1000-64/``: 1,000 radiographs at 64×64 (RGB or RGBA files with R = G = B, alpha opaque), 264 patients;
* ``nih-real-sample/images_256/``: 621 radiographs at 256×256 (mode L), one per patient. The 16 originals in
  ``source_1024/`` are all among the 256 px ones and are not read.

Every image becomes 8-bit gray 64×64: the 64 px files lose only their redundant channels (the script checks
R = G = B and an opaque alpha, so nothing is lost), the 256 px files are shrunk ×4 with ``Image.reduce(4)``,
i.e. each output pixel is the rounded mean of a 4×4 block (area/box resampling). An image name found in both
sets is kept once, from ``nih-real-sample`` (its 64 px pixels come from the documented 1024 → 256 → 64 box
chain; the two copies differ by at most 1 grey level). Labels are NIH's own rows (``labels.csv`` of each set);
a name in both sets must carry the same findings and patient in both.

Output (``np.savez_compressed``, written to a temporary file and renamed; loads with ``allow_pickle=False``):

* ``images``: N×64×64 uint8, rows sorted by image name;
* ``names``: image file names (fixed-width unicode);
* ``labels``: N×14 float32 in :data:`medbackdoor.labels.LABELS` order ("No Finding" is all zero);
* ``patients``: NIH patient ids as strings (``"75"``, as :class:`medbackdoor.data.nih.NIHChestXray14` does);
* ``source``: the set each image came from (``nih1000-64`` or ``nih-real-sample``);
* ``findings``: the NIH ``Finding Labels`` strings as given.

Usage::

    python tools/build_nih_sample.py [DATA_DIR]      # DATA_DIR defaults to ../shared/data beside the repo
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from medbackdoor._io import atomic_path  # noqa: E402
from medbackdoor.labels import LABELS, parse_findings  # noqa: E402

OUT = REPO / "medbackdoor" / "data" / "assets" / "nih_sample.npz"
DEFAULT_DATA = REPO.parent / "shared" / "data"
SIZE = 64
# (set name, image folder inside it, side of its files); the later set wins for a name in both.
SETS = (("nih1000-64", "images", 64), ("nih-real-sample", "images_256", 256))


def gray64(path: Path, side: int) -> np.ndarray:
    """One file as 64×64 uint8 gray, refusing any loss (colour, transparency) or an unexpected size."""
    with Image.open(path) as img:
        img.load()
        if img.size != (side, side):
            raise SystemExit(f"{path}: {img.size[0]}x{img.size[1]}, expected {side}x{side}")
        arr = np.asarray(img)
    if arr.ndim == 3:
        if arr.shape[2] == 4:
            if arr[..., 3].min() != 255:
                raise SystemExit(f"{path}: alpha channel is not opaque")
            arr = arr[..., :3]
        if not (np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])):
            raise SystemExit(f"{path}: colour channels differ, gray conversion would lose information")
        arr = arr[..., 0]
    if arr.dtype != np.uint8 or arr.ndim != 2:
        raise SystemExit(f"{path}: expected 8-bit samples, got {arr.dtype} with shape {arr.shape}")
    gray = Image.fromarray(np.ascontiguousarray(arr), mode="L")
    if side != SIZE:
        gray = gray.reduce(side // SIZE)  # exact block mean (box/area), rounded
    return np.asarray(gray, dtype=np.uint8)


def check_sums(folder: Path) -> None:
    """Verify ``sha256sums.txt`` where a set ships one."""
    sums = folder / "sha256sums.txt"
    if not sums.is_file():
        return
    for line in sums.read_text().splitlines():
        digest, _, rel = line.strip().partition("  ")
        if rel and (folder / rel).is_file():
            if hashlib.sha256((folder / rel).read_bytes()).hexdigest() != digest:
                raise SystemExit(f"{folder / rel}: SHA-256 does not match sha256sums.txt")


def read_set(data: Path, name: str, sub: str, side: int) -> pd.DataFrame:
    folder = data / name
    check_sums(folder)
    table = pd.read_csv(folder / "labels.csv", dtype={"Image Index": str, "Finding Labels": str, "Patient ID": str})
    if table["Image Index"].duplicated().any():
        raise SystemExit(f"{folder}/labels.csv lists an image twice")
    files = sorted(p.name for p in (folder / sub).glob("*.png"))
    listed = set(table["Image Index"])
    if set(files) != listed:
        raise SystemExit(f"{folder}: {len(set(files) - listed)} image(s) without a label row, "
                         f"{len(listed - set(files))} label row(s) without an image")
    table = table.set_index("Image Index").loc[files].reset_index()
    table["Finding Labels"] = table["Finding Labels"].fillna("No Finding")
    table["Patient ID"] = table["Patient ID"].str.strip().astype(int).astype(str)
    table["source"] = name
    table["path"] = [folder / sub / f for f in files]
    table["side"] = side
    return table[["Image Index", "Finding Labels", "Patient ID", "source", "path", "side"]]


def build(data: Path, out: Path = OUT) -> dict:
    tables = [read_set(data, *spec) for spec in SETS]
    both = pd.concat(tables, ignore_index=True)
    dup = both[both["Image Index"].duplicated(keep=False)]
    for name, rows in dup.groupby("Image Index"):
        if rows["Finding Labels"].nunique() != 1 or rows["Patient ID"].nunique() != 1:
            raise SystemExit(f"{name} has different labels or patients in the two sets")
    table = both.drop_duplicates("Image Index", keep="last").sort_values("Image Index").reset_index(drop=True)
    images = np.stack([gray64(p, s) for p, s in zip(table["path"], table["side"])])
    arrays = {
        "images": images,
        "names": table["Image Index"].to_numpy().astype(str),
        "labels": parse_findings(table["Finding Labels"]),
        "patients": table["Patient ID"].to_numpy().astype(str),
        "source": table["source"].to_numpy().astype(str),
        "findings": table["Finding Labels"].to_numpy().astype(str),
    }
    assert arrays["labels"].shape == (len(table), len(LABELS))
    with atomic_path(out, suffix=".npz") as tmp:
        with open(tmp, "wb") as f:  # a file object: savez would otherwise append ".npz" to the temp name
            np.savez_compressed(f, **arrays)
        tmp.chmod(0o644)  # mkstemp makes it private; package data must be readable by all
    return {"images": len(table), "patients": int(table["Patient ID"].nunique()), "duplicates": int(dup.shape[0] // 2),
            "per_source": table["source"].value_counts().to_dict(), "bytes": out.stat().st_size}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", type=Path, default=DEFAULT_DATA,
                        help="folder holding nih1000-64/ and nih-real-sample/ (default: ../shared/data)")
    parser.add_argument("--out", type=Path, default=OUT, help=f"output file (default: {OUT.relative_to(REPO)})")
    args = parser.parse_args(argv)
    info = build(args.data.resolve(), args.out)
    print(f"wrote {args.out}: {info['images']} images of {info['patients']} patients "
          f"({', '.join(f'{k} {v}' for k, v in info['per_source'].items())}; "
          f"{info['duplicates']} name(s) in both sets kept once), {info['bytes'] / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
