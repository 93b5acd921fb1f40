"""Turning a source radiograph into a model input: decode to 8-bit gray, optional centre crop, resize.

The paper's public code read the 1024² PNG, centre-cropped 60% of it and resized to 224 px with nearest
neighbour; ``Preprocess(crop=0.6, resize="nearest")`` mirrors that. The default keeps the whole image and
averages pixel areas (``resize="area"``), which is what most chest X-ray pipelines do.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from medbackdoor.errors import UserError

RESIZE_METHODS = {"nearest": Image.NEAREST, "area": Image.BOX, "bilinear": Image.BILINEAR}


@dataclass(frozen=True)
class Preprocess:
    """How a source image becomes a square model input.

    Attributes:
        crop: side fraction kept by a centre crop, in (0, 1]; 1 keeps everything (the paper's code used 0.6).
        resize: ``nearest``, ``area`` (pixel-area average, Pillow's BOX) or ``bilinear`` (Pillow's, antialiased).
    """

    crop: float = 1.0
    resize: str = "area"

    def __post_init__(self) -> None:
        if not 0.0 < float(self.crop) <= 1.0:
            raise UserError(f"preprocess.crop must be in (0, 1], got {self.crop}")
        if self.resize not in RESIZE_METHODS:
            raise UserError(f"preprocess.resize must be one of {', '.join(RESIZE_METHODS)}, got {self.resize!r}")

    def as_dict(self) -> dict:
        return asdict(self)


def to_gray8(img: Image.Image) -> np.ndarray:
    """Any Pillow image (L, LA, P, RGB, RGBA, 16-bit I;16 or 32-bit I) as an H×W uint8 array.

    Colour is reduced with Pillow's ITU-R 601 luma (lossless when R = G = B); alpha is dropped; 16-bit values
    are mapped from the full 0..65535 range onto 0..255.
    """
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode != "I" or arr.max() > 255 else 255.0
        return np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8)
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        return np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    if img.mode == "RGBA":
        img = img.convert("RGB")
    if img.mode != "L":
        img = img.convert("L")
    return np.asarray(img, dtype=np.uint8).copy()


def read_gray8(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file fully into H×W uint8.

    Raises:
        UserError: the file is missing, corrupt or truncated; the message names the file.
    """
    try:
        with Image.open(path) as img:
            img.load()
            return to_gray8(img)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise UserError(f"cannot decode image {os.fspath(path)}: {exc}") from None


def centre_crop(img: np.ndarray, fraction: float) -> np.ndarray:
    """Keep the central ``fraction`` of each side (rounded to whole pixels, at least 1)."""
    if fraction >= 1.0:
        return img
    h, w = img.shape
    ch, cw = max(1, round(h * fraction)), max(1, round(w * fraction))
    top, left = (h - ch) // 2, (w - cw) // 2
    return img[top : top + ch, left : left + cw]


def preprocess(img: np.ndarray, size: int, prep: Preprocess) -> np.ndarray:
    """Crop then resize an H×W uint8 image to ``size``×``size`` uint8."""
    img = centre_crop(img, prep.crop)
    if img.shape == (size, size):
        return np.ascontiguousarray(img)
    out = Image.fromarray(img).resize((size, size), RESIZE_METHODS[prep.resize])
    return np.asarray(out, dtype=np.uint8)
