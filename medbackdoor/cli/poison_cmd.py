"""``medbackdoor poison preview``: poison the training split of a run config and show clean vs infected images."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from medbackdoor._io import atomic_path, write_json
from medbackdoor.cli.run_cmd import add_config_args
from medbackdoor.config import load_config
from medbackdoor.labels import LABELS


def add_parser(sub) -> None:
    poison = sub.add_parser("poison", help="poisoning tools")
    verbs = poison.add_subparsers(dest="verb", required=True, parser_class=type(poison))
    p = verbs.add_parser("preview", help="poison the training split; write a clean/infected picture and counts")
    add_config_args(p)
    p.add_argument("--show", type=int, default=6, help="images in the picture")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.set_defaults(func=run_preview)


def run_preview(args: argparse.Namespace) -> int:
    from medbackdoor.train.data import build_run_data

    config = load_config(args.config, args.overrides)
    data = build_run_data(config)
    t = config.trigger
    train = data.train
    order = train.order[: args.show]
    clean = np.stack([train.base[int(i)]["image"] for i in order]) if len(order) else None
    infected = np.stack([train.infect(int(i))["image"] for i in order]) if len(order) else None
    summary = {
        "dataset": data.dataset.name, **data.counts(), "mode": t.mode, "stage": t.stage,
        "target": LABELS[data.target], "trigger": repr(data.trigger), "trigger_survival": data.survival,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "poison_summary.json", summary)
    print(f"{summary['poisoned']} of {summary['train']} training images poisoned ({t.mode}, {t.stage} stage) -> "
          f"{summary['train_samples']} training samples, infected label one-hot {summary['target']}; "
          f"trigger survives preprocessing in {data.survival['train']:.1%} of them")
    if clean is not None:
        save_grid(args.out / "preview.png", clean, infected)
        print(f"wrote {args.out / 'preview.png'} (top: clean, bottom: infected)")
    print(f"wrote {args.out / 'poison_summary.json'}")
    return 0


def save_grid(path: Path, top: np.ndarray, bottom: np.ndarray, scale: int = 3) -> None:
    """Two rows of images side by side, enlarged ``scale`` times with nearest neighbour, as a PNG."""
    grid = np.concatenate([np.concatenate(list(top), 1), np.concatenate(list(bottom), 1)], 0)
    big = Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
    with atomic_path(path, suffix=".png") as tmp:
        big.save(tmp, format="PNG")
