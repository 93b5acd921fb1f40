"""``saliency``: the project's explanation-based detectors as an input defense.

Grad-CAM of one finding per input (the top predicted one by default), reduced to one number by a detector of
:mod:`medbackdoor.explain.localise`: a trigger the model relies on tends to pull the map onto a small spot, so
a sharp map (``top1pct_mass``: the share of saliency in the brightest 1% of pixels; ``concentration``: one minus
the map's normalised entropy) is suspicious. The trigger, its place and the target are not needed.
"""

from __future__ import annotations

import numpy as np
import torch

from medbackdoor.defenses.base import DEFENSES, Defender, InputDefense, one_of
from medbackdoor.errors import UserError
from medbackdoor.explain.cam import CAMS
from medbackdoor.explain.localise import DETECTORS
from medbackdoor.labels import label_index

LAYERS = ("last", "middle")


def check_fpr(name: str, fpr: float) -> None:
    if not 0 < fpr < 1:
        raise UserError(f"{name} fpr must be in (0, 1), got {fpr}")


def check_layer(name: str, layer: str) -> None:
    one_of(name, "layer", layer, LAYERS)


def top_findings(d: Defender, images: np.ndarray) -> np.ndarray:
    """The index of the highest-scoring finding of each uint8 image (one batched forward per ``d.batch_size``)."""
    return d.outputs(images).argmax(1) if len(images) else np.zeros(0, np.int64)


def cam_maps(d: Defender, images: np.ndarray, targets: np.ndarray, layer: str) -> np.ndarray:
    """Grad-CAM maps (N×H×W in [0, 1], numpy) of finding ``targets[i]`` on image ``i`` at ``layer``."""
    if not len(images):
        return np.zeros((0, *np.shape(images)[-2:]), np.float32)  # spatial, for gray and colour images alike
    with CAMS.get("gradcam")(d.model, layer) as cam:
        return cam(images, torch.as_tensor(targets, dtype=torch.long), d.batch_size).cpu().numpy()


@DEFENSES.register("saliency")
class Saliency(InputDefense):
    """How concentrated the Grad-CAM of the input's top finding is (Selvaraju et al. 2017; this project's paper).

    Args:
        detector: ``top1pct_mass`` (share of saliency in the brightest 1% of pixels) or ``concentration``
            (1 − normalised entropy of the map).
        layer: ``last`` (the final feature map) or ``middle`` (dense block 3, twice as fine).
        target: ``predicted`` (the highest-scoring finding of each input, the default: the defender does not
            know the target) or one finding, by name or index, to explain on every input.
        fpr: false-positive rate on clean holdout images that sets the flag threshold.
        calibration: ``split`` (the holdout's second half calibrates; the default) or ``crossfit`` (both
            halves, each scored with the other as the reference); see :class:`InputDefense`.
        ties: ``random`` (smoothed conformal p-value; the default) or ``conservative`` (a score tied with the
            threshold is not flagged); see :class:`InputDefense`.

    Multi-label: the single-label "predicted class" is the finding with the highest sigmoid score.
    """

    paper = ("Selvaraju et al. 2017, Grad-CAM (ICCV); used as a detector in 'Explainability matters: backdoor "
             "attacks on medical imaging' (Nwadike et al. 2020)")
    changes = "explains the top-scoring of the 14 sigmoid findings (or a named finding) instead of the argmax class"
    label = "saliency"

    def __init__(self, detector: str = "top1pct_mass", layer: str = "last", target: str | int = "predicted",
                 fpr: float = 0.05,
                 calibration: str = "split", ties: str = "random") -> None:
        super().__init__(fpr, calibration, ties)
        check_fpr("saliency", fpr)
        check_layer("saliency", layer)
        one_of("saliency", "detector", detector, DETECTORS)
        if target != "predicted" and not str(target).strip():
            raise UserError("saliency target must be predicted or a finding of the run's dataset")
        self.detector, self.layer, self.target = detector, layer, target

    def score(self, d: Defender, images) -> np.ndarray:
        out = [np.zeros(0)]
        for lo in range(0, len(images), d.batch_size):
            x = np.asarray(images[lo : lo + d.batch_size])
            targets = (top_findings(d, x) if self.target == "predicted"
                       else np.full(len(x), label_index(self.target, d.label_names)))
            out.append(DETECTORS[self.detector](cam_maps(d, x, targets, self.layer)))
        return np.concatenate(out).astype(np.float64)
