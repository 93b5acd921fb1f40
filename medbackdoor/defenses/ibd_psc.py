"""``ibd-psc``: parameter-oriented scaling consistency: does the prediction survive amplifying the BatchNorm layers?

Hou, Guo, Li, Wang, Wang and Qi, "IBD-PSC: Input-level Backdoor Detection via Parameter-oriented Scaling
Consistency", ICML 2024.

Multiply the scale and shift (γ, β) of the last ``k`` BatchNorm layers by ``omega`` (> 1). A clean input's
prediction drifts as ``k`` grows; a triggered input keeps the attacker's, because the backdoor's neurons are
amplified along with the rest. The method finds the first ``k`` (counting from the last BatchNorm layer) at which
the amplified model changes the prediction of more than a share ``xi`` of clean reference images, then scores an
input by the mean probability of its original prediction under the ``n`` models amplified at
``k, k + 1, …, k + n − 1`` layers: the parameter-oriented scaling consistency (PSC).

Multi-label changes: the "prediction" is the input's top-scoring finding (highest sigmoid); the PSC is the mean,
over the amplified models, of that finding's sigmoid; the reference error at ``k`` is the share of reference
images whose top finding changes (there is no single true class to be wrong about). The flag threshold is
calibrated on the holdout at ``fpr`` like every input defense here, not the paper's fixed T = 0.9. The start
layer ``k`` is chosen on the holdout's first half (the reference) and the threshold on its second half.
(BackdoorBox's implementation scores models amplified at ``k + 1, …, k + n`` layers, one more than it probed; this
one uses the ``k`` it probed.)
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from medbackdoor.defenses.base import DEFENSES, Defender, InputDefense
from medbackdoor.defenses.saliency import check_fpr
from medbackdoor.defenses.strip import as_float
from medbackdoor.errors import UserError
from medbackdoor.inference import with_channels
from medbackdoor.models.info import norm_layers


@DEFENSES.register("ibd-psc")
class IBDPSC(InputDefense):
    """IBD-PSC (Hou et al., ICML 2024): consistency of the top finding under amplified BatchNorm parameters.

    Args:
        omega: the factor on γ and β of the amplified layers (the paper: 1.5).
        n: amplified models averaged (the paper: 5).
        xi: the share of reference images whose top finding must change for a depth ``k`` to start the
            amplified models (the paper: 0.6).
        fpr: false-positive rate on clean holdout images that sets the flag threshold.
        calibration: ``split`` or ``crossfit``; ties: ``conservative`` or ``random``; see :class:`InputDefense`.
    """

    paper = "Hou et al. 2024, IBD-PSC: Input-level Backdoor Detection via Parameter-oriented Scaling Consistency"
    changes = ("the prediction is the top-scoring finding and the PSC the mean sigmoid of that finding over the "
               "amplified models; the start layer's benign error is the share of reference images whose top "
               "finding changes; threshold calibrated on the holdout at fpr instead of a fixed T")
    label = "ibd-psc"

    def __init__(self, omega: float = 1.5, n: int = 5, xi: float = 0.6, fpr: float = 0.05,
                 calibration: str = "split", ties: str = "random") -> None:
        super().__init__(fpr, calibration, ties)
        check_fpr("ibd-psc", fpr)
        if not omega > 0 or omega == 1:
            raise UserError(f"ibd-psc omega must be positive and not 1, got {omega}")
        if n < 1:
            raise UserError(f"ibd-psc n must be at least 1, got {n}")
        if not 0 <= xi < 1:
            raise UserError(f"ibd-psc xi must be in [0, 1), got {xi}")
        self.omega, self.n, self.xi = omega, n, xi
        self.info: dict = {}

    def _amplifier(self, d: Defender):
        """A copy of the model and a function k → set its last k BatchNorm layers amplified (the rest as trained)."""
        def copy_model():
            model = copy.deepcopy(d.model).eval()
            layers = [bn for _, bn in norm_layers(model, "ibd-psc")]
            return model, layers, [(bn.weight.detach().clone(), bn.bias.detach().clone()) for bn in layers]

        model, layers, originals = d.cached("ibd-psc:model", copy_model)

        @torch.no_grad()
        def amplify(k: int) -> torch.nn.Module:
            for i, (bn, (w, b)) in enumerate(zip(layers, originals)):
                f = self.omega if i >= len(layers) - k else 1.0
                bn.weight.copy_(w * f)
                bn.bias.copy_(b * f)
            return model

        return amplify, len(layers)

    def _outputs(self, model: torch.nn.Module, images, d: Defender) -> torch.Tensor:
        out = []
        with torch.no_grad():
            for lo in range(0, len(images), d.batch_size):
                x = with_channels(as_float(images[lo : lo + d.batch_size], d))
                out.append(d.task.activation(model(x).float()).cpu())
        return torch.cat(out) if out else torch.zeros(0, len(d.label_names))

    def depths(self, d: Defender) -> list[int]:
        """The amplified depths ``k, …, k + n − 1`` (capped at the number of layers), ``k`` chosen on the
        reference images (cached per reference)."""
        key = f"ibd-psc:depths:{self.omega}:{self.n}:{self.xi}:{self.reference_tag()}"

        def compute():
            images, _ = self.reference(d)
            if not len(images):
                raise UserError("ibd-psc needs reference images (the first half of the holdout); it has none")
            amplify, layers = self._amplifier(d)
            top = self._outputs(amplify(0), images, d).argmax(1)
            start, changed = None, []
            for k in range(1, layers + 1):
                share = float((self._outputs(amplify(k), images, d).argmax(1) != top).double().mean())
                changed.append(share)
                if share > self.xi:
                    start = k
                    break
            amplify(0)
            reached = start is not None
            start = start if reached else max(1, layers - self.n + 1)
            self.info = {"layers": layers, "start": start, "xi_reached": reached, "changed_share": changed,
                         "reference_images": len(images)}
            return np.arange(start, min(start + self.n, layers + 1))

        return [int(k) for k in d.cached(key, compute)]

    def score(self, d: Defender, images) -> np.ndarray:
        depths = self.depths(d)
        amplify, _ = self._amplifier(d)
        original = self._outputs(amplify(0), images, d)
        top = original.argmax(1) if len(original) else torch.zeros(0, dtype=torch.long)
        psc = torch.zeros(len(original), dtype=torch.float64)
        for k in depths:
            p = self._outputs(amplify(k), images, d)
            psc += p[torch.arange(len(p)), top].double()
        amplify(0)
        return (psc / len(depths)).numpy()
