"""Turning a source image into a model input: decode to 8-bit gray (or RGB, channel first), optional centre crop,
resize.

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
    """Decode an image file fully into H×W uint8 (:func:`read_image8` with one channel).

    Raises:
        UserError: the file is missing, corrupt or truncated; the message names the file.
    """
    return read_image8(path, 1)


def to_rgb8(img: Image.Image) -> np.ndarray:
    """Any Pillow image as a 3×H×W uint8 array (RGB, channel first): gray is replicated, alpha and palettes are
    resolved by Pillow's RGB conversion, 16-bit gray is scaled as in :func:`to_gray8`."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        gray = to_gray8(img)
        return np.stack([gray] * 3)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))


def read_image8(path: str | os.PathLike, channels: int = 1) -> np.ndarray:
    """Decode an image file fully: H×W uint8 for ``channels`` 1 (:func:`to_gray8`), 3×H×W for 3 (:func:`to_rgb8`).

    Raises:
        UserError: the file is missing, corrupt or truncated; the message names the file.
    """
    try:
        with Image.open(path) as img:
            img.load()
            return to_gray8(img) if channels == 1 else to_rgb8(img)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise UserError(f"cannot decode image {os.fspath(path)}: {exc}") from None


def centre_crop(img: np.ndarray, fraction: float) -> np.ndarray:
    """Keep the central ``fraction`` of each side (rounded to whole pixels, at least 1); the last two axes are the
    spatial ones (H×W gray or C×H×W colour)."""
    if fraction >= 1.0:
        return img
    h, w = img.shape[-2:]
    ch, cw = max(1, round(h * fraction)), max(1, round(w * fraction))
    top, left = (h - ch) // 2, (w - cw) // 2
    return img[..., top : top + ch, left : left + cw]


def preprocess(img: np.ndarray, size: int, prep: Preprocess) -> np.ndarray:
    """Crop then resize an H×W (gray) or 3×H×W (RGB) uint8 image to ``size``×``size`` uint8, channels kept first.
    A colour image is resized with Pillow's RGB resampling (the same filter on each channel)."""
    img = centre_crop(img, prep.crop)
    if img.shape[-2:] == (size, size):
        return np.ascontiguousarray(img)
    if img.ndim == 3:
        if img.shape[0] != 3:
            raise UserError(f"a colour image must be 3×H×W (RGB, channel first), got shape {img.shape}")
        rgb = Image.fromarray(np.ascontiguousarray(img.transpose(1, 2, 0)), "RGB")
        out = rgb.resize((size, size), RESIZE_METHODS[prep.resize])
        return np.ascontiguousarray(np.asarray(out, dtype=np.uint8).transpose(2, 0, 1))
    out = Image.fromarray(img).resize((size, size), RESIZE_METHODS[prep.resize])
    return np.asarray(out, dtype=np.uint8)
