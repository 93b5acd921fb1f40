"""Arguments shared by several sub-commands: the run config (``--config``, ``--set``) and its data shorthands."""

from __future__ import annotations

import argparse
import json

from medbackdoor.config import RunConfig, load_config, split_assignment
from medbackdoor.data import DATASETS, ChestXrayDataset, Preprocess

# Shorthand flag (its argparse dest) → the config key it sets. Each is applied as ``--set key=value`` before the
# user's own ``--set``s, so an explicit ``--set`` wins; a shorthand left out sets nothing.
ALIASES: dict[str, str] = {
    "dataset": "dataset.name",
    "data_root": "dataset.root",
    "limit": "dataset.limit",
    "image_size": "image_size",
    "crop": "preprocess.crop",
    "resize": "preprocess.resize",
    "cache_dir": "cache_dir",
}
# ``--data-option KEY=VALUE`` keys that are dataset config keys of their own rather than ``dataset.options.*``.
DATASET_KEYS = ("name", "root", "limit", "split", "val_fraction")


def add_dataset_args(parser: argparse.ArgumentParser) -> None:
    """Shorthands for the ``dataset.*`` config keys (every one defaults to "not given")."""
    group = parser.add_argument_group("dataset shorthands (each is a --set; an explicit --set wins)")
    group.add_argument("--dataset", default=None, help=f"dataset.name: one of {', '.join(DATASETS.names())}")
    group.add_argument("--data-root", default=None, help="dataset.root: folder holding the dataset (nih)")
    group.add_argument("--limit", type=int, default=None, help="dataset.limit: at most this many images")
    group.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE",
                       help="dataset.options.KEY (dataset.KEY for split, val_fraction), e.g. n_images=500 "
                            "(repeatable)")


def add_preprocess_args(parser: argparse.ArgumentParser) -> None:
    """Shorthands for ``image_size``, ``preprocess.*`` and ``cache_dir``."""
    group = parser.add_argument_group("preprocessing shorthands (each is a --set; an explicit --set wins)")
    group.add_argument("--image-size", type=int, default=None, help="image_size: model input side in pixels")
    group.add_argument("--crop", type=float, default=None, help="preprocess.crop: centre-crop fraction "
                                                                "(the paper's code: 0.6)")
    group.add_argument("--resize", default=None, help="preprocess.resize: nearest, area or bilinear")
    group.add_argument("--cache-dir", default=None, help="cache_dir (default $MEDBACKDOOR_CACHE or "
                                                         "~/.cache/medbackdoor)")


def data_option_override(pair: str) -> str:
    """One ``--data-option KEY=VALUE`` as a ``--set`` override (the value is read as YAML, like ``--set``).

    Args:
        pair: ``KEY=VALUE``; dashes in KEY become underscores.

    Returns:
        ``dataset.KEY=VALUE`` for keys of the dataset section itself, else ``dataset.options.KEY=VALUE``.

    Raises:
        UserError: ``pair`` has no ``=`` or no key (the value is read, once, by the ``--set`` it becomes).
    """
    key, value = split_assignment(pair, "--data-option")
    key = key.replace("-", "_")
    section = "dataset" if key in DATASET_KEYS else "dataset.options"
    return f"{section}.{key}={value}"


def alias_overrides(args: argparse.Namespace) -> list[str]:
    """The ``--set`` overrides the shorthand flags given on the command line stand for, in a fixed order.

    Values are written as JSON scalars, which YAML reads back unchanged (a root named ``2020`` stays a string).
    """
    out = [f"{key}={json.dumps(getattr(args, dest))}" for dest, key in ALIASES.items()
           if getattr(args, dest, None) is not None]
    return out + [data_option_override(pair) for pair in getattr(args, "data_option", None) or []]


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The run config of ``--config``, then the shorthand flags, then ``--set`` (the last wins)."""
    return load_config(args.config, alias_overrides(args) + list(args.overrides))


def dataset_from_config(config: RunConfig) -> ChestXrayDataset:
    """The dataset exactly as a run with ``config`` builds it (same options, same data seed)."""
    from medbackdoor.experiment import build_dataset

    return build_dataset(config)  # an unknown option is a UserError there, for runs too


def preprocess_from_config(config: RunConfig) -> Preprocess:
    """The ``preprocess`` section as a :class:`Preprocess` (validated: crop in (0, 1], a known resize)."""
    return Preprocess(crop=config.preprocess.crop, resize=config.preprocess.resize)


def print_json(data: dict) -> None:
    print(json.dumps(data, indent=2, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))
