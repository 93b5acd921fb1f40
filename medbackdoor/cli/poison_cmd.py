"""``medbackdoor poison preview``: poison a training split and show clean vs infected images."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from medbackdoor._io import atomic_path, write_json
from medbackdoor.cli._common import add_dataset_args, add_preprocess_args, dataset_from_args, preprocess_from_args
from medbackdoor.data.cache import load_images
from medbackdoor.labels import LABELS
from medbackdoor.poison import TRAIN_STREAM, ImageSplit, PoisonedDataset, triggered_images
from medbackdoor.triggers import TRIGGERS, create_trigger


def add_parser(sub) -> None:
    poison = sub.add_parser("poison", help="poisoning tools")
    verbs = poison.add_subparsers(dest="verb", required=True, parser_class=type(poison))
    p = verbs.add_parser("preview", help="poison the training split; write a clean/infected picture and counts")
    add_dataset_args(p)
    add_preprocess_args(p)
    t = p.add_argument_group("trigger and poisoning")
    t.add_argument("--trigger", default="square", help=f"one of: {', '.join(TRIGGERS.names())}")
    t.add_argument("--trigger-size", type=int, default=3, help="side in px (of the image it is written on)")
    t.add_argument("--trigger-value", type=float, default=0.0, help="intensity in [0, 1] (0 = black)")
    t.add_argument("--location", default="center", help="center or random")
    t.add_argument("--target", default="Atelectasis", help="attacked class")
    t.add_argument("--fraction", type=float, default=0.4, help="share ρ of training images poisoned")
    t.add_argument("--mode", default="replace", help="replace or append")
    t.add_argument("--stage", default="input", help="input (after resize) or source (before crop and resize)")
    p.add_argument("--show", type=int, default=6, help="images in the picture")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.set_defaults(func=run_preview)


def run_preview(args: argparse.Namespace) -> int:
    dataset = dataset_from_args(args)
    prep = preprocess_from_args(args)
    trigger = create_trigger(args.trigger, size=args.trigger_size, value=args.trigger_value, location=args.location)
    images = load_images(dataset, args.image_size, prep, args.cache_dir, args.workers)
    train = ImageSplit(images, dataset.labels, dataset.patients, dataset.split_indices("train"))
    rows_all = train.indices
    probe = PoisonedDataset(train, trigger, args.fraction, args.target, args.mode, args.seed)
    rows = rows_all[probe.order]
    infected, survived = triggered_images(dataset, rows, images[rows], trigger, args.stage, args.seed, TRAIN_STREAM,
                                          prep, workers=args.workers)
    poisoned = PoisonedDataset(train, trigger, args.fraction, args.target, args.mode, args.seed,
                               triggered=dict(zip(probe.order.tolist(), infected)))
    summary = {
        "dataset": dataset.name, "train_images": len(train), "poisoned": len(poisoned.poisoned),
        "length_after_poisoning": len(poisoned), "mode": args.mode, "stage": args.stage,
        "target": LABELS[poisoned.target], "trigger": repr(trigger),
        "trigger_survival": float(survived.mean()) if len(survived) else float("nan"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "poison_summary.json", summary)
    save_grid(args.out / "preview.png", images[rows[: args.show]], infected[: args.show])
    print(f"{summary['poisoned']} of {summary['train_images']} training images poisoned ({args.mode}, "
          f"{args.stage} stage) -> {summary['length_after_poisoning']} training samples, infected label "
          f"one-hot {summary['target']}; trigger survives preprocessing in {summary['trigger_survival']:.1%}")
    print(f"wrote {args.out / 'preview.png'} (top: clean, bottom: infected) and {args.out / 'poison_summary.json'}")
    return 0


def save_grid(path: Path, top: np.ndarray, bottom: np.ndarray, scale: int = 3) -> None:
    """Two rows of images side by side, enlarged ``scale`` times with nearest neighbour, as a PNG."""
    grid = np.concatenate([np.concatenate(list(top), 1), np.concatenate(list(bottom), 1)], 0)
    big = Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
    with atomic_path(path, suffix=".png") as tmp:
        big.save(tmp, format="PNG")
