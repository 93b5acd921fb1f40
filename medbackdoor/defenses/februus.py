"""``februus``: cut out the region the model looks at for its top finding and inpaint it, before classifying.

Doan, Abbasnejad and Ranasinghe, "Februus: Input Purification Defense Against Trojan Attacks on Deep Neural
Network Systems", ACSAC 2020.

For every input: Grad-CAM (the final feature map by default) of its top-scoring finding; the most salient pixels
(the top ``fraction`` of the map's positive pixels, or those whose map is at least ``threshold`` when that is
given), grown by ``dilate`` pixels, are removed and inpainted. A trigger is what a backdoored model looks at on a
triggered input, so it is what gets removed; on a clean input a small region of the image is redrawn from its
surroundings, which the classifier should mostly tolerate.

Changed from the paper: the inpainter. The paper trains a GAN inpainter on clean data; here the hole is filled
with OpenCV's Telea inpainting (``cv2.inpaint``) when OpenCV is installed, else scikit-image's biharmonic
inpainting (``inpainter`` picks one). Neither needs training, and both fill small holes in smooth X-ray
texture well; large holes come back blurred.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from medbackdoor.defenses.base import DEFENSES, Defender, Mitigation, one_of
from medbackdoor.errors import UserError
from medbackdoor.explain.cam import CAMS

INPAINTERS = ("auto", "opencv", "biharmonic")
OPENCV_RADIUS = 3  # pixels around the hole that Telea's method looks at


def _cv2():
    try:
        import cv2
    except ImportError:
        return None
    return cv2


@DEFENSES.register("februus")
class Februus(Mitigation):
    """Februus (Doan et al., ACSAC 2020): remove the top finding's Grad-CAM region and inpaint it.

    Multi-label changes: the map is taken for each image's top-scoring finding (highest sigmoid) instead of
    the predicted softmax class, from the logit; the GAN inpainter is replaced by OpenCV (Telea) or
    scikit-image (biharmonic) inpainting.

    Args:
        fraction: share of the image's pixels removed: the most salient ones with a positive map.
        threshold: if given, remove instead every pixel whose map (each scaled to [0, 1]) is at least this.
        dilate: grow the removed region by this many pixels (3×3 square steps).
        layer: the Grad-CAM layer (``last``: the final feature map; ``middle``; or a module name).
        method: the saliency method (``gradcam``, ``gradcam++``).
        inpainter: ``auto`` (OpenCV if installed, else biharmonic), ``opencv`` or ``biharmonic``.
        batch_size: images per Grad-CAM batch.
    """

    paper = "Doan et al. 2020, Februus: Input Purification Defense Against Trojan Attacks on Deep Neural Networks"
    changes = ("Grad-CAM of each image's top-scoring finding (logit) instead of the softmax class; OpenCV or "
               "biharmonic inpainting instead of a trained GAN")

    def __init__(self, fraction: float = 0.05, threshold: float | None = None, dilate: int = 2,
                 layer: str = "last", method: str = "gradcam", inpainter: str = "auto",
                 batch_size: int = 32) -> None:
        if not 0 < fraction < 1:
            raise UserError(f"februus fraction must be in (0, 1), got {fraction}")
        if threshold is not None and not 0 < threshold <= 1:
            raise UserError(f"februus threshold must be in (0, 1], got {threshold}")
        if dilate < 0:
            raise UserError(f"februus dilate must be 0 or more, got {dilate}")
        if not layer.strip():
            raise UserError("februus layer must be last, middle or a module name")
        if method not in CAMS:
            raise UserError(f"februus method must be one of {', '.join(CAMS.names())}, got {method!r}")
        one_of("februus", "inpainter", inpainter, INPAINTERS)
        if inpainter == "opencv" and _cv2() is None:
            raise UserError("februus inpainter opencv needs OpenCV (pip install opencv-python-headless); "
                            "use inpainter: biharmonic")
        if batch_size < 1:
            raise UserError(f"februus batch_size must be at least 1, got {batch_size}")
        self.fraction, self.threshold, self.dilate = fraction, threshold, dilate
        self.layer, self.method, self.inpainter, self.batch_size = layer, method, inpainter, batch_size
        self.info: dict = {}

    def options(self) -> dict:
        return {k: v for k, v in super().options().items() if k != "info"}

    @property
    def engine(self) -> str:
        """The inpainter that runs: ``opencv`` or ``biharmonic``."""
        if self.inpainter == "auto":
            return "opencv" if _cv2() is not None else "biharmonic"
        return self.inpainter

    def regions(self, d: Defender, images) -> np.ndarray:
        """N×H×W bool: the pixels to remove (the top finding's most salient region, dilated), for N×H×W or
        N×C×H×W images (a pixel is removed in every channel)."""
        x = np.asarray(images)
        if x.ndim not in (3, 4):
            raise UserError(f"februus expects N×H×W or N×C×H×W images, got shape {x.shape}")
        if not len(x):
            return np.zeros((0, *x.shape[-2:]), bool)
        top = d.outputs(x).argmax(1)
        with CAMS.get(self.method)(d.model, self.layer, "logit") as cam:
            maps = cam(x, torch.from_numpy(top), self.batch_size).detach().float().cpu().numpy()
        out = np.zeros((len(x), *x.shape[-2:]), bool)
        k = max(1, int(round(self.fraction * x.shape[-2] * x.shape[-1])))
        square = np.ones((3, 3), bool)
        for i, m in enumerate(maps):
            if self.threshold is not None:
                region = (m >= self.threshold) & (m > 0)
            else:
                flat = m.ravel()
                positive = int((flat > 0).sum())
                region = np.zeros(flat.size, bool)
                region[np.argsort(-flat, kind="stable")[: min(k, positive)]] = True
                region = region.reshape(m.shape)
            if self.dilate and region.any():
                region = ndimage.binary_dilation(region, structure=square, iterations=self.dilate)
            out[i] = region
        return out

    def purify(self, d: Defender, images) -> np.ndarray:
        x = np.asarray(images)
        if x.dtype != np.uint8:
            raise UserError(f"februus expects uint8 images, got {x.dtype}")
        regions = self.regions(d, x)
        out = x.copy()
        engine = self.engine
        for i in range(len(x)):
            region = regions[i]
            if region.any() and not region.all():  # a hole with something around it to fill from
                out[i] = inpaint(x[i], region, engine)
        done = self.info.get("images", 0)
        share = float(regions.mean()) if len(x) else 0.0
        mean = (self.info.get("mean_removed_fraction", 0.0) * done + share * len(x)) / max(done + len(x), 1)
        self.info = {"images": done + len(x), "mean_removed_fraction": round(mean, 6), "inpainter": engine}
        return out


def inpaint(image: np.ndarray, region: np.ndarray, engine: str = "biharmonic") -> np.ndarray:
    """One H×W (or C×H×W colour) uint8 image with the pixels in ``region`` (H×W) filled from their surroundings,
    in every channel; the rest unchanged."""
    colour = image.ndim == 3
    planar = np.ascontiguousarray(image.transpose(1, 2, 0) if colour else image)  # H×W×C for the inpainters
    if engine == "opencv":
        cv2 = _cv2()
        filled = cv2.inpaint(planar, region.astype(np.uint8), OPENCV_RADIUS, cv2.INPAINT_TELEA)
    else:
        from skimage.restoration import inpaint_biharmonic

        filled = inpaint_biharmonic(planar.astype(np.float64) / 255.0, region, channel_axis=-1 if colour else None)
        filled = np.clip(np.rint(filled * 255.0), 0, 255).astype(np.uint8)
    filled = filled.reshape(planar.shape)
    if colour:
        filled = filled.transpose(2, 0, 1)
    out = image.copy()
    out[..., region] = filled[..., region]
    return out
