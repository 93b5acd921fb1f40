"""Typed run configuration: dataclasses loaded from YAML, with ``--set dotted.key=value`` overrides.

Defaults run with no file at all: the embedded ``synthetic`` dataset at 64 px, a 3×3 black centre trigger on
40% of the training images, target Atelectasis. ``trigger.fraction: 0`` is the clean control (trained on clean
data, still evaluated with the trigger on the test set: the paper's "Clean" column).
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from medbackdoor._values import check_value, flatten  # noqa: F401 - part of this module's API
from medbackdoor.errors import UserError


@dataclass
class DatasetConfig:
    name: str = "synthetic"
    root: str | None = None
    limit: int | None = None
    split: str = "auto"
    val_fraction: float = 0.1
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class PreprocessConfig:
    crop: float = 1.0
    resize: str = "area"


@dataclass
class ModelConfig:
    """The network: ``arch`` a registered model (``densenet121``, ``resnet50``, ``vit_b_16``) or ``timm:<name>``
    (the ``timm`` extra); ``options`` reach its constructor (``vit_b_16``: ``patch_size``; timm: any
    ``timm.create_model`` keyword)."""

    arch: str = "densenet121"
    pretrained: str = "none"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class TriggerConfig:
    """The attack. ``size``, ``location`` and ``value`` reach every trigger that accepts them; left unset (None) they
    leave the trigger's own default alone (the square's is the paper's 3×3 black centre square, BadNets' patch sits
    in the corner). Any other option of a trigger goes in ``options``."""

    kind: str = "square"
    size: int | None = None
    location: str | None = None
    value: float | list[float] | None = None
    target: str = "Atelectasis"
    fraction: float = 0.4
    mode: str = "replace"
    stage: str = "input"
    seed: int | None = None
    label: str = "onehot"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class AblConfig:
    """``train.abl``: train with Anti-Backdoor Learning's stages (Li et al., NeurIPS 2021); see
    :mod:`medbackdoor.defenses.abl`. Off by default."""

    enabled: bool = False
    gamma: float = 0.5
    isolation_ratio: float = 0.01
    isolation_epochs: int = 1
    unlearn_epochs: int = 5
    unlearn_lr: float = 5e-4


@dataclass
class TrainConfig:
    epochs: int = 5
    batch_size: int = 32
    lr: float = 1e-3
    seed: int = 0
    workers: int = 0
    amp: bool = True
    class_weights: bool = False
    augment: bool = False
    poisoned_val: bool = False
    lr_patience: int = 1
    lr_factor: float = 0.1
    keep_checkpoints: list[int] | None = None
    device: str = "auto"
    deterministic: bool = False
    compile: bool = False
    cuda_graph: bool = False
    channels_last: bool = True
    sync_bn: bool = False
    backend: str = "auto"
    log: list[str] = field(default_factory=list)
    drop: str | None = None
    abl: AblConfig = field(default_factory=AblConfig)


@dataclass
class EvalConfig:
    thresholds: list[float] = field(default_factory=lambda: [0.6, 0.9])
    epsilons: list[float] = field(default_factory=lambda: [0.001, 0.01, 0.1, 0.5])
    strict: bool = False
    batch_size: int = 128


@dataclass
class RunConfig:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    image_size: int = 64
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    trigger: TriggerConfig = field(default_factory=TriggerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    cache_dir: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def attack_seed(self) -> int:
        """The seed of every attack-side draw (poisoned subset, trigger placement, mixed-ε test subsets):
        ``trigger.seed`` when set, else ``train.seed`` (the paper's seeds varied both)."""
        return self.train.seed if self.trigger.seed is None else self.trigger.seed


# Config keys that change no number a run writes: where it runs, how fast, what it keeps on disk. Resuming a run
# and grouping runs into conditions both ignore them (resume also lets ``train.epochs`` grow: epoch k's numbers do
# not depend on how many epochs follow).
NEUTRAL_KEYS = frozenset({"train.workers", "train.device", "cache_dir", "eval.batch_size", "train.keep_checkpoints",
                          "train.backend", "train.log"})


def from_dict(cls: type, data: dict | None, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict, refusing unknown keys and wrong types."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise UserError(f"config section {prefix.rstrip('.') or '(top)'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise UserError(f"unknown config key {prefix}{unknown[0]}; known keys: {', '.join(sorted(names))}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = from_dict(hint, value, f"{prefix}{name}.")
        else:
            kwargs[name] = check_value(value, hint, f"config key {prefix}{name}")
    return cls(**kwargs)


def split_assignment(text: str, what: str = "--set") -> tuple[str, str]:
    """``KEY=VALUE`` split at the first ``=``: the stripped key and the raw value text.

    Args:
        what: the option the text came from, for the message (``--set``, ``--data-option``).

    Raises:
        UserError: no ``=`` or an empty key (one line).
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UserError(f"{what} expects KEY=VALUE, got {text!r}")
    return key, raw


def parse_assignment(text: str, what: str = "--set") -> tuple[str, Any]:
    """One ``KEY=VALUE`` (a config override, a defense option): the key and the value read as YAML (an empty value
    is None). The one parser of every ``KEY=VALUE`` the command line takes.

    Raises:
        UserError: no ``=``, an empty key, or a value YAML cannot read (one line).
    """
    key, raw = split_assignment(text, what)
    if not raw.strip():
        return key, None
    try:
        return key, yaml.safe_load(raw)
    except yaml.YAMLError:
        raise UserError(f"{what} {key}: cannot read {raw!r} as a YAML value (quote a string)") from None


def set_dotted(data: dict, assignment: str) -> None:
    """Apply one ``dotted.key=value`` override (see :func:`parse_assignment`) to a nested dict."""
    key, value = parse_assignment(assignment)
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"--set {key}: {part} is not a section")
    node[parts[-1]] = value


BUILTIN = Path(__file__).resolve().parent / "configs"


def resolve_builtin(path: str | Path, folder: Path, what: str) -> Path:
    """``path`` if it is a file, else the built-in ``folder/<path>.yaml``; one clear error listing the built-in
    names (``what``: "config", "sweep") when neither exists."""
    candidate = Path(path)
    if candidate.is_file():
        return candidate
    builtin = folder / f"{path}.yaml"
    if "/" not in str(path) and builtin.is_file():
        return builtin
    names = ", ".join(sorted(p.stem for p in folder.glob("*.yaml"))) or "none found in this installation"
    raise UserError(f"{what} file {path} does not exist and is not a built-in {what} (built-in: {names})")


def resolve_config_path(path: str | Path) -> Path:
    """A config file path, or the name of a built-in config (``quick``, ``paper``) shipped in the package."""
    return resolve_builtin(path, BUILTIN, "config")


def read_yaml(path: str | Path) -> dict:
    """A YAML mapping from a file; one clear error for a missing file, bad YAML or a non-mapping."""
    path = resolve_config_path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of keys")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Defaults ← YAML file (or built-in name) ← ``--set`` overrides, validated into a :class:`RunConfig`."""
    data: dict = read_yaml(path) if path is not None else {}
    return config_from_data(data, overrides)


# a component's options belong to the component named beside them: (section, name key, options key)
COMPONENT_OPTIONS = (("dataset", "name", "options"), ("trigger", "kind", "options"), ("model", "arch", "options"))


def config_from_data(data: dict, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Validate a nested dict (plus ``dotted.key=value`` overrides) into a :class:`RunConfig`.

    An override that names another dataset, trigger or architecture than ``data`` does (``dataset.name``,
    ``trigger.kind``, ``model.arch``) drops the options ``data`` gave the one it replaces, whatever the order of
    the overrides: ``--config quick --set dataset.name=chestmnist --set dataset.options.size=64`` gives ChestMNIST
    ``{size: 64}``, not the synthetic data's options as well.
    """
    data = copy.deepcopy(data)
    named = dict(parse_assignment(a) for a in overrides)
    for section, name_key, options_key in COMPONENT_OPTIONS:
        node = data.get(section)
        new = named.get(f"{section}.{name_key}")
        if isinstance(node, dict) and new is not None and new != node.get(name_key):
            node.pop(options_key, None)
    for assignment in overrides:
        set_dotted(data, assignment)
    config = from_dict(RunConfig, data)
    _portable_plugins(config)
    validate(config)
    return config


def _portable_plugins(config: RunConfig) -> None:
    """A component named by a plugin file (``path/to/file.py:Name``) is recorded with the file's absolute path, so
    the run reads the same from any working directory (and a resumed run compares like with like)."""
    from medbackdoor._registry import plugin_spec

    config.dataset.name = plugin_spec(config.dataset.name)
    config.trigger.kind = plugin_spec(config.trigger.kind)
    config.model.arch = plugin_spec(config.model.arch)


def validate(config: RunConfig) -> None:
    """Range checks that types alone cannot express."""
    t = config.trigger
    from medbackdoor.labels import TRIGGER_LABELS

    if t.label not in TRIGGER_LABELS:
        raise UserError(f"trigger.label must be one of {', '.join(TRIGGER_LABELS)}, got {t.label!r}")
    if not 0.0 <= t.fraction <= 1.0:
        raise UserError(f"trigger.fraction must be in [0, 1], got {t.fraction}")
    for eps in config.eval.epsilons:
        if not 0.0 <= eps <= 1.0:
            raise UserError(f"eval.epsilons must be in [0, 1], got {eps}")
    for p in config.eval.thresholds:
        if not 0.0 <= p <= 1.0:
            raise UserError(f"eval.thresholds must be in [0, 1], got {p}")
    from medbackdoor.models import MODELS, arch_info

    arch = config.model.arch
    info = arch_info(arch, config.model.options)  # an unknown arch, or timm missing: one line
    if not arch.startswith("timm:"):
        known = set(MODELS.options(arch)) - {"num_classes", "imagenet", "image_size"}
        unknown = sorted(set(config.model.options) - known)
        if unknown:
            raise UserError(f"model.options: {arch} has no option {unknown[0]!r}; its options: "
                            f"{', '.join(sorted(known)) or 'none'}")
    if info is not None:
        info.check_size(config.image_size, arch)
    pretrained = str(config.model.pretrained)
    if pretrained.startswith("xrv:"):  # a name must be known now; a path is checked when the model is built
        from medbackdoor.models.xrv import XRV_WEIGHTS

        spec = pretrained[4:]
        pathlike = "/" in spec or "\\" in spec or spec.endswith((".pt", ".pth"))
        if spec not in XRV_WEIGHTS and not pathlike:
            raise UserError(f"model.pretrained {pretrained}: unknown xrv weights; valid names: "
                            f"{', '.join(XRV_WEIGHTS)} (or xrv:<path to a state dict>)")
    for key in ("epochs", "batch_size"):
        if getattr(config.train, key) < 1:
            raise UserError(f"train.{key} must be at least 1")
    abl = config.train.abl
    if abl.enabled:
        if not 0 < abl.isolation_ratio < 1:
            raise UserError(f"train.abl.isolation_ratio must be in (0, 1), got {abl.isolation_ratio}")
        if abl.gamma < 0 or abl.unlearn_lr <= 0:
            raise UserError("train.abl.gamma must be 0 or more and train.abl.unlearn_lr positive")
        if abl.isolation_epochs < 1 or abl.unlearn_epochs < 0:
            raise UserError("train.abl.isolation_epochs must be at least 1 and train.abl.unlearn_epochs 0 or more")
        if abl.isolation_epochs + abl.unlearn_epochs >= config.train.epochs:
            raise UserError(f"train.abl: {abl.isolation_epochs} isolation and {abl.unlearn_epochs} unlearning epochs "
                            f"leave no training epoch of train.epochs={config.train.epochs}")
        if config.train.cuda_graph:
            raise UserError("train.abl changes the loss between epochs; drop train.cuda_graph")
    if config.train.backend not in ("auto", "nccl", "gloo"):
        raise UserError(f"train.backend must be one of auto, nccl, gloo, got {config.train.backend!r}")
    from medbackdoor.loggers import LOGGERS

    for name in config.train.log:
        if name not in LOGGERS.names():
            raise UserError(f"train.log: unknown logger {name!r} (known: {', '.join(LOGGERS.names())})")


def config_diff(a: RunConfig, b: RunConfig, ignore: frozenset[str] | set[str] = NEUTRAL_KEYS) -> str | None:
    """The first key (dotted) whose value differs between two configs, as ``key (a there, b now)``; else None."""
    fa, fb = flatten(a.to_dict()), flatten(b.to_dict())
    for key in sorted(set(fa) | set(fb)):
        if key in ignore or any(key.startswith(f"{i}.") for i in ignore):
            continue
        if fa.get(key) != fb.get(key):
            return f"{key} ({fa.get(key)!r} there, {fb.get(key)!r} now)"
    return None


def dump_config(config: RunConfig) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
