"""``model.pretrained: xrv:<name>`` — start our DenseNet-121 from a TorchXRayVision chest X-ray DenseNet-121.

TorchXRayVision (xrv; Cohen et al., MIDL 2022) trains torchvision-layout DenseNet-121s on chest X-rays, with
one input channel in xrv units (8-bit gray [0, 255] → [−1024, 1024]) at 224 px and up to 18 outputs named in
``model.targets``. :func:`to_xrv_input` switches our model to that input convention (``input`` becomes
:class:`XrvInput`, ``features.conv0`` a 1-channel convolution; the state-dict keys stay the same, only
``features.conv0.weight`` becomes 64×1×7×7), and :func:`load_xrv` copies xrv's feature weights and maps xrv's
classifier rows onto our head by finding name; our labels xrv does not predict keep their fresh rows.

Weights are read with ``torch.load(..., weights_only=True)`` only, so nothing is unpickled. The files xrv
downloads for its DenseNets are whole pickled models (xrv reads them with ``weights_only=False`` and takes
``.state_dict()``), which such a load refuses: export a state dict once with xrv (docs/models.md) and point
``xrv:<name>`` (cache folder) or ``xrv:<path>`` at it.

The weight table below is copied from torchxrayvision 1.5.7 (``torchxrayvision/models.py``, ``model_urls``).
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from medbackdoor.errors import UserError

log = logging.getLogger(__name__)

XRV_VERSION = "1.5.7"  # the torchxrayvision release the table below was read from
CACHE_ENV = "TORCHXRAYVISION_CACHE"  # ours: xrv itself always uses ~/.torchxrayvision/models_data/

# xrv's default pathology list (``xrv.datasets.default_pathologies`` = ``xrv.models.DenseNet.targets``), in order.
DEFAULT_TARGETS: tuple[str, ...] = (
    "Atelectasis", "Consolidation", "Infiltration", "Pneumothorax", "Edema", "Emphysema", "Fibrosis", "Effusion",
    "Pneumonia", "Pleural_Thickening", "Cardiomegaly", "Nodule", "Mass", "Hernia", "Lung Lesion", "Fracture",
    "Lung Opacity", "Enlarged Cardiomediastinum",
)


def _only(*keep: str) -> tuple[str, ...]:
    """The 18-slot target list with the slots outside ``keep`` blank (xrv's "" for an untrained output)."""
    assert set(keep) <= set(DEFAULT_TARGETS)
    return tuple(t if t in keep else "" for t in DEFAULT_TARGETS)


_BASE = "https://github.com/mlmed/torchxrayvision/releases/download/v1/"
_NIH14 = DEFAULT_TARGETS[:14]
_CHEX = ("Atelectasis", "Consolidation", "Pneumothorax", "Edema", "Effusion", "Pneumonia", "Cardiomegaly",
         "Lung Lesion", "Fracture", "Lung Opacity", "Enlarged Cardiomediastinum")

# name → (file xrv downloads into its cache, the 18 output names; "" = an output these weights never trained).
XRV_WEIGHTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "densenet121-res224-all": (
        "nih-pc-chex-mimic_ch-google-openi-kaggle-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt",
        DEFAULT_TARGETS),
    "densenet121-res224-nih": ("nih-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt", _only(*_NIH14)),
    "densenet121-res224-pc": ("pc-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt",
                              _only(*_NIH14, "Fracture")),
    "densenet121-res224-chex": ("chex-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt", _only(*_CHEX)),
    "densenet121-res224-rsna": ("kaggle-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt",
                                _only("Pneumonia", "Lung Opacity")),
    "densenet121-res224-mimic_nb": ("mimic_nb-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt",
                                    _only(*_CHEX)),
    "densenet121-res224-mimic_ch": ("mimic_ch-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt",
                                    _only(*_CHEX)),
}

# Other names for xrv's targets (after normalising: lower case, "_"/"-" → space), e.g. CheXpert/MIMIC names.
_ALIASES = {
    "pleural effusion": "effusion",
    "infiltrate": "infiltration",
    "infiltrates": "infiltration",
    "airspace opacity": "lung opacity",
    "pulmonary fibrosis": "fibrosis",
    "pulmonary edema": "edema",
}

XRV_SCALE = 2048.0  # gray [0, 1] → xrv units: x·2048 − 1024 (= xrv.datasets.normalize(255·x, 255))
XRV_OFFSET = 1024.0


class XrvInput(nn.Module):
    """B×1×H×W gray in [0, 1] → B×1×H×W in xrv units [−1024, 1024]. No state: the state-dict keys stay ours."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * XRV_SCALE - XRV_OFFSET


def is_xrv(model: nn.Module) -> bool:
    """Whether ``model`` takes xrv-convention input (a 1-channel ``features.conv0``)."""
    conv0 = getattr(getattr(model, "features", None), "conv0", None)
    return isinstance(conv0, nn.Conv2d) and conv0.in_channels == 1


def to_xrv_input(model: nn.Module) -> nn.Module:
    """Switch a DenseNet-121 of ours to the xrv input convention, in place (idempotent); returns ``model``.

    ``model.input`` becomes :class:`XrvInput` and ``features.conv0`` a fresh 1-input-channel convolution (same
    device and dtype; load weights into it afterwards).
    """
    conv0 = getattr(getattr(model, "features", None), "conv0", None)
    if not isinstance(conv0, nn.Conv2d) or not hasattr(model, "input"):
        raise UserError(f"xrv weights need a DenseNet-121 (features.conv0 and input); {type(model).__name__} "
                        "has neither")
    if conv0.in_channels != 1:
        new = nn.Conv2d(1, conv0.out_channels, conv0.kernel_size, conv0.stride, conv0.padding,
                        bias=conv0.bias is not None).to(device=conv0.weight.device, dtype=conv0.weight.dtype)
        nn.init.kaiming_normal_(new.weight)
        model.features.conv0 = new
    model.input = XrvInput()
    return model


def accept_xrv_checkpoints(model: nn.Module) -> nn.Module:
    """Let ``model.load_state_dict`` take a state dict of an xrv-convention model (1-channel conv0).

    A run started from ``xrv:...`` saves a 1-channel ``features.conv0.weight`` under our usual keys. With this
    hook, a model built without the xrv file (``create_model(arch, "none")``, as when a run is reloaded for
    defenses, explanations or metrics) switches itself to the xrv convention when such a state dict is loaded.
    Call it before building an optimizer over ``model.parameters()``: the switch replaces ``conv0``.
    """
    if hasattr(getattr(model, "features", None), "conv0") and hasattr(model, "input"):
        model.register_load_state_dict_pre_hook(_switch_on_xrv_state)
    return model


def _switch_on_xrv_state(module, state_dict, prefix, *_args) -> None:
    weight = state_dict.get(prefix + "features.conv0.weight")
    if isinstance(weight, torch.Tensor) and weight.ndim == 4 and weight.shape[1] == 1 and not is_xrv(module):
        to_xrv_input(module)


def cache_dir() -> Path:
    """``$TORCHXRAYVISION_CACHE`` if set, else xrv's own cache, ``~/.torchxrayvision/models_data/``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".torchxrayvision" / "models_data").expanduser()


def _normalise(name: str) -> str:
    key = re.sub(r"\s+", " ", re.sub(r"[_\-]", " ", name)).strip().lower()
    return _ALIASES.get(key, key)


def match_labels(ours: Sequence[str], targets: Sequence[str]) -> dict[int, int]:
    """Our label index → xrv output index, for each of our labels xrv predicts (by name, with aliases)."""
    theirs = {_normalise(t): j for j, t in enumerate(targets) if t}
    return {i: theirs[_normalise(name)] for i, name in enumerate(ours) if _normalise(name) in theirs}


def export_snippet(name: str, out: Path) -> str:
    """The python one-liner that saves xrv weights ``name`` as a state dict at ``out`` (needs torchxrayvision)."""
    return (f"python -c \"import torch, torchxrayvision as xrv; m = xrv.models.DenseNet(weights='{name}'); "
            f"torch.save({{'state_dict': m.state_dict(), 'targets': list(m.pathologies)}}, '{out}')\"")


def resolve(spec: str) -> tuple[Path, str | None]:
    """The state-dict file for ``xrv:<spec>`` and the weights name (``None`` for a path).

    A name is looked up in :func:`cache_dir`: first ``<name>.pt`` (a state dict exported with xrv), then the
    file xrv downloads (accepted only if it is a state dict, see :func:`read_state`).
    """
    if spec in XRV_WEIGHTS:
        folder = cache_dir()
        exported, downloaded = folder / f"{spec}.pt", folder / XRV_WEIGHTS[spec][0]
        for path in (exported, downloaded):
            if path.is_file():
                return path, spec
        raise UserError(f"model.pretrained xrv:{spec}: no weights file {exported} (nor xrv's download "
                        f"{downloaded.name}); on a machine with internet and torchxrayvision run "
                        f"{export_snippet(spec, Path(f'{spec}.pt'))} and copy {spec}.pt to {folder}/ "
                        f"(or set ${CACHE_ENV}, or give xrv:<path>); see docs/models.md")
    path = Path(spec).expanduser()
    if path.is_file():
        return path, _name_of_file(path)
    if "/" in spec or os.sep in spec or path.suffix in (".pt", ".pth"):
        raise UserError(f"model.pretrained xrv:{spec}: no such file")
    raise UserError(f"model.pretrained xrv:{spec}: unknown xrv weights; valid names: {', '.join(XRV_WEIGHTS)} "
                    "(or xrv:<path to a state dict>)")


def _name_of_file(path: Path) -> str | None:
    """The weights name a file is named after (``<name>.pt`` or xrv's download name), if any."""
    for name, (filename, _) in XRV_WEIGHTS.items():
        if path.name in (f"{name}.pt", f"{name}.pth", filename):
            return name
    return None


def read_state(path: Path, name: str | None) -> tuple[dict[str, torch.Tensor], tuple[str, ...]]:
    """An xrv DenseNet-121 state dict and its output names, read with ``weights_only=True``.

    The file is a plain state dict (``m.state_dict()``) or ``{"state_dict": ..., "targets": [...]}`` as the
    export snippet writes. Output names: the file's ``targets``, else the weights table's for ``name``, else xrv's
    default 18 (right for ``densenet121-res224-all``; for other weights name the file ``<name>.pt`` or save
    ``targets``).
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        hint = name or "densenet121-res224-all"
        snippet = export_snippet(hint, path.with_name(f"{hint}.pt"))
        raise UserError(f"{path} is a pickled model, not a state dict, and medbackdoor loads weights only with "
                        f"weights_only=True (nothing unpickled); export a state dict with torchxrayvision"
                        f"{'' if name else ', e.g.'}: {snippet} (docs/models.md)") from None
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise UserError(f"cannot load xrv weights from {path}: {str(exc).splitlines()[0]}") from None
    targets = None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        targets = obj.get("targets")
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path} is not a state dict (a dict of tensors)")
    if targets is None and name is None:
        log.warning("%s: no targets saved and not named after xrv weights; assuming xrv's 18 default targets "
                    "(right for densenet121-res224-all only)", path)
    if targets is None:
        targets = XRV_WEIGHTS[name][1] if name else DEFAULT_TARGETS
    if not isinstance(targets, (list, tuple)) or not all(isinstance(t, str) for t in targets):
        raise UserError(f"{path}: targets must be a list of names")
    return obj, tuple(targets)


def load_xrv(model: nn.Module, spec: str, label_names: Sequence[str]) -> dict:
    """Switch ``model`` to the xrv convention and load xrv weights ``spec`` (a weights name or a file path).

    Features are copied whole; classifier rows by name (:func:`match_labels`). Returns what was done:
    ``{"weights", "file", "targets", "mapped": {our label: xrv target}, "fresh": [our labels left fresh]}``.
    """
    path, name = resolve(spec)
    state, targets = read_state(path, name)
    to_xrv_input(model)
    ours = model.features.state_dict()
    theirs = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    missing = [k for k in ours if k not in theirs]
    wrong = [k for k in ours if k in theirs and theirs[k].shape != ours[k].shape]
    if missing or wrong or "classifier.weight" not in state or "classifier.bias" not in state:
        first = (missing + wrong + ["classifier.weight"])[0]
        raise UserError(f"{path} is not an xrv DenseNet-121 state dict ({len(missing)} missing, {len(wrong)} "
                        f"misshapen keys, e.g. features.{first})")
    weight, bias = state["classifier.weight"], state["classifier.bias"]
    if weight.shape != (len(targets), model.classifier.in_features) or bias.shape != (len(targets),):
        raise UserError(f"{path}: classifier is {tuple(weight.shape)}, expected {len(targets)}×"
                        f"{model.classifier.in_features} for its {len(targets)} targets")
    model.features.load_state_dict({k: theirs[k] for k in ours}, strict=True)
    labels = tuple(label_names)
    pairs = match_labels(labels, targets)
    with torch.no_grad():
        for i, j in pairs.items():
            model.classifier.weight[i].copy_(weight[j])
            model.classifier.bias[i].copy_(bias[j])
    info = {"weights": name, "file": str(path), "targets": list(targets),
            "mapped": {labels[i]: targets[j] for i, j in pairs.items()},
            "fresh": [label for i, label in enumerate(labels) if i not in pairs]}
    log.info("xrv weights %s: %d of %d labels from xrv (%s); fresh: %s", name or path, len(pairs), len(labels),
             ", ".join(f"{a}←{b}" if a != b else a for a, b in info["mapped"].items()),
             ", ".join(info["fresh"]) or "none")
    return info
