"""``medbackdoor data check`` and ``medbackdoor data cache``: the data of a run config, checked or cached.

Both read the same ``--config`` / ``--set`` keys as ``medbackdoor run``, so ``data cache --config paper`` builds
exactly the cache a paper run reads. ``--dataset``, ``--data-root``, ... are shorthands for ``--set`` keys.
"""

from __future__ import annotations

import argparse

from medbackdoor.cli._common import (
    add_dataset_args,
    add_preprocess_args,
    config_from_args,
    dataset_from_config,
    preprocess_from_config,
    print_json,
)
from medbackdoor.cli.run_cmd import add_config_args
from medbackdoor.data.cache import build_cache, cache_path, load_images
from medbackdoor.data.check import check_dataset
from medbackdoor.errors import UserError
from medbackdoor.labels import LABELS


def add_parser(sub) -> None:
    data = sub.add_parser("data", help="validate and cache the dataset of a run config")
    verbs = data.add_subparsers(dest="verb", required=True, parser_class=type(data))
    check = verbs.add_parser("check", help="decode every image, parse labels and splits, print counts")
    add_config_args(check)
    add_dataset_args(check)
    check.add_argument("--workers", type=int, default=None, help="decoding processes (default: CPU count)")
    check.add_argument("--json", action="store_true", help="print JSON")
    check.set_defaults(func=run_check)
    cache = verbs.add_parser("cache", help="build (or reuse) the preprocessed cache a run of this config reads")
    add_config_args(cache)
    add_dataset_args(cache)
    add_preprocess_args(cache)
    cache.add_argument("--workers", type=int, default=None, help="decoding processes (default: CPU count)")
    cache.add_argument("--rebuild", action="store_true", help="build again even if a valid cache exists")
    cache.set_defaults(func=run_cache)


def run_check(args: argparse.Namespace) -> int:
    dataset = dataset_from_config(config_from_args(args))
    report = check_dataset(dataset, workers=args.workers, progress=not args.json)
    if report["corrupt"]:
        first = report["corrupt"][0]["error"]
        more = f" (and {len(report['corrupt']) - 1} more)" if len(report["corrupt"]) > 1 else ""
        raise UserError(f"{first}{more}")
    if args.json:
        print_json(report)
    else:
        print(format_report(report))
    return 0


def format_report(report: dict) -> str:
    kind = f"{report.get('task', 'multilabel')}, {'RGB' if report.get('channels') == 3 else 'gray'}"
    lines = [f"dataset {report['dataset']}: {report['images']} images ({kind}), {report['missing']} listed but "
             "missing, patient overlap between splits: " + ("unknown (no patient ids in this dataset)"
                                                   if report["patient_overlap"] is None
                                                   else str(report["patient_overlap"]))]
    lines.append(f"{'split':<6} {'images':>8} {'patients':>9}")
    for split, row in report["splits"].items():
        lines.append(f"{split:<6} {row['images']:>8} {row['patients']:>9}")
    single = report.get("task", "multilabel") != "multilabel"
    lines.append(f"{'images per class' if single else 'positives per finding'} (train / val / test):")
    for label in report.get("labels", LABELS):
        counts = " / ".join(str(report["splits"][s]["positives"][label]) for s in report["splits"])
        lines.append(f"  {label:<19} {counts}")
    lines.append("source sizes: " + ", ".join(f"{k} ({v})" for k, v in report["source_sizes"].items()))
    return "\n".join(lines)


def run_cache(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    dataset, prep, size = dataset_from_config(config), preprocess_from_config(config), config.image_size
    path = cache_path(dataset, size, prep, config.cache_dir)
    if args.rebuild or not path.exists():
        info = build_cache(dataset, size, prep, path, args.workers)
        print(f"built {path}: {info['images']} images in {info['seconds']:.1f} s "
              f"({info['images_per_second']:.0f} img/s)")
    else:
        images = load_images(dataset, size, prep, config.cache_dir)
        print(f"reused {path}: {images.shape[0]} images at {size}px")
    return 0
