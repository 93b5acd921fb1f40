"""Derive the statistics behind the embedded ``synthetic`` dataset from real NIH ChestX-ray14 metadata.

The numbers the synthetic generator uses (label prevalence and co-occurrence, images per patient, where findings
sit in the chest, the lung shape) are not invented: this script reads them from files that ship in the PyPI
package ``torchxrayvision`` and writes two small assets into ``medbackdoor/data/assets/``.

Usage::

    pip download --no-deps torchxrayvision -d /tmp/txrv
    python tools/derive_synthetic_assets.py /tmp/txrv/torchxrayvision-*.whl

Sources inside the wheel:
    * ``torchxrayvision/data/Data_Entry_2017_v2020.csv.gz``: the label table of all 112,120 NIH images.
    * ``torchxrayvision/data/BBox_List_2017.csv.gz``: the 984 radiologist boxes of 8 findings (1024 px frame).
    * ``torchxrayvision/data/semantic_masks_v7labs_lungs.zip``: 517 binary lung masks (V7 Labs).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from medbackdoor.labels import LABELS, parse_findings  # noqa: E402

ASSETS = Path(__file__).resolve().parents[1] / "medbackdoor" / "data" / "assets"
TEMPLATE_SIZE = 64
BBOX_NAMES = {"Infiltrate": "Infiltration"}  # the box list spells one finding differently


def label_stats(csv_bytes: bytes) -> dict:
    """Joint label distribution (as combination counts) and images per patient."""
    table = pd.read_csv(io.BytesIO(csv_bytes), compression="gzip")
    y = parse_findings(table["Finding Labels"])
    keys = ["".join(str(int(v)) for v in row) for row in y.astype(np.uint8)]
    combos = Counter(keys)
    per_patient = Counter(table.groupby("Patient ID").size().tolist())
    return {
        "n_images": int(len(table)),
        "n_patients": int(table["Patient ID"].nunique()),
        "prevalence": dict(zip(LABELS, np.round(y.mean(0), 6).tolist())),
        "combinations": sorted(([k, int(c)] for k, c in combos.items()), key=lambda kc: -kc[1]),
        "images_per_patient": sorted([int(k), int(c)] for k, c in per_patient.items()),
    }


def bbox_stats(csv_bytes: bytes) -> dict[str, list[list[float]]]:
    """Finding boxes as normalised ``[cx, cy, w, h]`` in the 1024 px frame, grouped by label."""
    table = pd.read_csv(io.BytesIO(csv_bytes), compression="gzip")
    xywh = table.iloc[:, 2:6].to_numpy(float) / 1024.0
    out: dict[str, list[list[float]]] = {}
    for name, (x, y, w, h) in zip(table["Finding Label"], xywh):
        name = BBOX_NAMES.get(name, name)
        out.setdefault(name, []).append([round(x + w / 2, 4), round(y + h / 2, 4), round(w, 4), round(h, 4)])
    return out


def lung_template(zip_bytes: bytes) -> np.ndarray:
    """Mean of the binary lung masks, each resized to the template size, as uint8 (255 = always lung)."""
    acc = np.zeros((TEMPLATE_SIZE, TEMPLATE_SIZE), np.float64)
    n = 0
    with zipfile.ZipFile(io.BytesIO(zip_bytes)) as zf:
        for name in zf.namelist():
            if name.endswith("/"):
                continue
            img = Image.open(io.BytesIO(zf.read(name))).convert("L").resize((TEMPLATE_SIZE,) * 2, Image.BILINEAR)
            acc += np.asarray(img, np.float64) / 255.0
            n += 1
    return np.round(acc / n * 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel", type=Path, help="a torchxrayvision wheel")
    args = parser.parse_args()
    with zipfile.ZipFile(args.wheel) as whl:
        read = lambda name: whl.read(f"torchxrayvision/data/{name}")  # noqa: E731
        stats = label_stats(read("Data_Entry_2017_v2020.csv.gz"))
        stats["bboxes"] = bbox_stats(read("BBox_List_2017.csv.gz"))
        template = lung_template(read("semantic_masks_v7labs_lungs.zip"))
    stats["labels"] = list(LABELS)
    stats["source"] = f"derived by tools/derive_synthetic_assets.py from {args.wheel.name}"
    ASSETS.mkdir(parents=True, exist_ok=True)
    (ASSETS / "nih_stats.json").write_text(json.dumps(stats, separators=(",", ":")) + "\n")
    Image.fromarray(template).save(ASSETS / "lung_template.png")
    print(f"wrote {ASSETS}: {len(stats['combinations'])} label combinations, {stats['n_images']} images")


if __name__ == "__main__":
    main()
