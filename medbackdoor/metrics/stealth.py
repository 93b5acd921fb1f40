"""How visible a trigger is: PSNR, SSIM and the share of changed pixels between clean and triggered images.

Images are N×H×W arrays (uint8, 0..255; N×C×H×W for colour) or any lazy view that returns such arrays for
``view[lo:hi]`` and has ``len()``; they are read ``chunk`` images at a time, so memory stays flat whatever N is.
PSNR and SSIM come from scikit-image (:func:`skimage.metrics.peak_signal_noise_ratio`,
:func:`skimage.metrics.structural_similarity`).
"""

from __future__ import annotations

import math

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

SSIM_WINDOW = 7  # scikit-image's default window side


def image_psnr(clean: np.ndarray, triggered: np.ndarray, data_range: float = 255.0) -> float:
    """PSNR of one image in dB: ``10·log10(data_range² / MSE)``, MSE the mean squared pixel difference.

    ``inf`` for identical images (MSE 0; returned without calling scikit-image, which would warn).
    """
    clean, triggered = np.asarray(clean), np.asarray(triggered)
    if np.array_equal(clean, triggered):
        return math.inf
    return float(peak_signal_noise_ratio(clean, triggered, data_range=data_range))


def image_ssim(clean: np.ndarray, triggered: np.ndarray, data_range: float = 255.0) -> float:
    """Mean SSIM of one H×W image, or of a C×H×W colour image averaged over its channels (Wang et al. 2004,
    scikit-image defaults: 7×7 uniform window, K1 = 0.01, K2 = 0.03): the mean over windows of
    ``(2·μx·μy + C1)(2·σxy + C2) / ((μx² + μy² + C1)(σx² + σy² + C2))``,
    ``C1 = (K1·data_range)²``, ``C2 = (K2·data_range)²``.

    1 for identical images. An image smaller than 7 px on a side uses the largest odd window that fits
    (≥ 3 px); below 3 px SSIM is undefined and the result is ``nan`` (unless the images are identical).
    """
    clean, triggered = np.asarray(clean), np.asarray(triggered)
    if np.array_equal(clean, triggered):
        return 1.0
    side = min(clean.shape[-2:])
    win = min(SSIM_WINDOW, side if side % 2 else side - 1)
    if win < 3:
        return math.nan
    channel_axis = 0 if clean.ndim == 3 else None  # colour: SSIM per channel, then their mean
    return float(structural_similarity(clean, triggered, data_range=data_range, win_size=win,
                                       channel_axis=channel_axis))


def stealth(clean, triggered, chunk: int = 256, data_range: float = 255.0) -> dict:
    """Stealth of a trigger over N image pairs (``clean[i]`` and ``triggered[i]``, same shape).

    Args:
        clean: N×H×W uint8 array or lazy view (``view[lo:hi]``, ``len()``), read in chunks.
        triggered: the triggered images, of the same kind and shape as ``clean``.
        chunk: images read at a time.
        data_range: the pixel value range (255 for uint8).

    Returns:
        A dict:

        - ``images``: N.
        - ``psnr``: mean PSNR in dB (:func:`image_psnr`) over the **changed** images only, since PSNR is
          ``inf`` for an identical pair; ``inf`` if no image changed, ``nan`` if N = 0.
        - ``ssim``: mean SSIM (:func:`image_ssim`) over all N images (identical pairs count as 1).
        - ``changed_pixels``: share of all N·H·W pixels whose value differs (in any channel).
        - ``changed_images``: share of the N images with at least one changed pixel (so the share of
          identical pairs, the images left out of ``psnr``, is ``1 − changed_images``).
    """
    n = len(clean)
    if len(triggered) != n:
        raise ValueError(f"{n} clean images but {len(triggered)} triggered images")
    if chunk < 1:
        raise ValueError(f"chunk must be ≥ 1, got {chunk}")
    psnr_sum = ssim_sum = 0.0
    changed_images = changed_pixels = pixels = 0
    for lo in range(0, n, chunk):
        a, b = np.asarray(clean[lo : lo + chunk]), np.asarray(triggered[lo : lo + chunk])
        if a.shape != b.shape:
            raise ValueError(f"clean images {a.shape} and triggered images {b.shape} differ in shape")
        diff = a != b
        if diff.ndim == 4:  # colour: a pixel changed when any of its channels did
            diff = diff.any(1)
        diff = diff.reshape(len(a), -1)
        changed_pixels += int(diff.sum())
        pixels += diff.size
        for x, y, changed in zip(a, b, diff.any(1)):
            ssim_sum += image_ssim(x, y, data_range)
            if changed:
                changed_images += 1
                psnr_sum += image_psnr(x, y, data_range)
    if n == 0:
        return {"images": 0, "psnr": math.nan, "ssim": math.nan, "changed_pixels": math.nan,
                "changed_images": math.nan}
    return {"images": n, "psnr": psnr_sum / changed_images if changed_images else math.inf, "ssim": ssim_sum / n,
            "changed_pixels": changed_pixels / pixels, "changed_images": changed_images / n}
