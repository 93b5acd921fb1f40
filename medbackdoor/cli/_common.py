"""Arguments shared by several sub-commands."""

from __future__ import annotations

import argparse
import json

import yaml

from medbackdoor.data import DATASETS, ChestXrayDataset, Preprocess, create_dataset
from medbackdoor.errors import UserError


def add_dataset_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("dataset")
    group.add_argument("--dataset", default="synthetic", help=f"one of: {', '.join(DATASETS.names())}")
    group.add_argument("--data-root", default=None, help="folder holding the dataset (nih)")
    group.add_argument("--limit", type=int, default=None, help="at most this many images per split")
    group.add_argument("--seed", type=int, default=0, help="seeds splits and subsets")
    group.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE",
                       help="extra dataset option, e.g. n_images=500 or split=official (repeatable)")


def add_preprocess_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("preprocessing")
    group.add_argument("--image-size", type=int, default=64, help="model input side in pixels")
    group.add_argument("--crop", type=float, default=1.0, help="centre-crop fraction (the paper's code: 0.6)")
    group.add_argument("--resize", default="area", help="nearest, area or bilinear")
    group.add_argument("--cache-dir", default=None, help="cache folder (default $MEDBACKDOOR_CACHE or "
                                                         "~/.cache/medbackdoor)")
    group.add_argument("--workers", type=int, default=None, help="worker processes (default: CPU count)")


def parse_options(pairs: list[str]) -> dict:
    """``KEY=VALUE`` strings to a dict; values are read as YAML scalars (numbers, booleans, strings)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"expected KEY=VALUE, got {pair!r}")
        out[key.strip().replace("-", "_")] = yaml.safe_load(value) if value else ""
    return out


def dataset_from_args(args: argparse.Namespace) -> ChestXrayDataset:
    options = parse_options(args.data_option)
    options.setdefault("seed", args.seed)
    if args.limit is not None:
        options["limit"] = args.limit
    try:
        return create_dataset(args.dataset, root=args.data_root, **options)
    except TypeError as exc:
        raise UserError(f"bad option for dataset {args.dataset}: {exc}") from None


def preprocess_from_args(args: argparse.Namespace) -> Preprocess:
    if args.image_size < 1:
        raise UserError(f"--image-size must be positive, got {args.image_size}")
    return Preprocess(crop=args.crop, resize=args.resize)


def print_json(data: dict) -> None:
    print(json.dumps(data, indent=2, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))
