"""``medbackdoor explain RUN_DIR``: Figure 1 and the localisation / detection table of a run."""

from __future__ import annotations

import argparse
from pathlib import Path

from medbackdoor.explain.cam import CAMS


def add_parser(sub) -> None:
    p = sub.add_parser("explain", help="Grad-CAM across epochs and layers: Figure 1 and localisation numbers")
    p.add_argument("run", type=Path, help="a run folder")
    p.add_argument("--epochs", type=int, nargs="+", default=None, help="checkpoints to explain (default: all)")
    p.add_argument("--layers", nargs="+", default=["last", "middle"], help="last, middle or module names")
    p.add_argument("--images", type=int, default=200, help="test images to measure on")
    p.add_argument("--target", default="target", help="target (the attacked class), predicted, or a class name")
    p.add_argument("--method", default="gradcam", help=f"one of: {', '.join(CAMS.names())}")
    p.add_argument("--score", default="logit", help="logit, or probability as the paper's code (saturates)")
    p.add_argument("--dilate", type=int, default=2, help="px added around the trigger box")
    p.add_argument("--figure-image", type=int, default=None, help="which measured image Figure 1 shows")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medbackdoor.explain.run_explain import explain_run
    from medbackdoor.run import Run

    result = explain_run(Run(args.run), args.epochs, tuple(args.layers), args.images, args.target, args.method,
                         args.score, args.dilate, args.figure_image)
    print(f"{result['images']} test images; wrote {result['csv']} and {result['figure']} (+ .pdf)")
    table = {}
    for r in result["rows"]:
        table.setdefault((r["epoch"], r["layer"]), {})[(r["version"], r["quantity"])] = r["value"]
    print(f"{'epoch':>5} {'layer':<8} {'mass in box clean/inf':>22} {'pointing clean/inf':>19} "
          f"{'detector AUROC':>15} {'TPR@5%FPR':>10}")
    for (epoch, layer), v in table.items():
        print(f"{epoch:>5} {layer:<8} {v[('clean', 'mass_in_box')]:>10.3f} / {v[('infected', 'mass_in_box')]:<9.3f}"
              f" {v[('clean', 'pointing_game')]:>8.3f} / {v[('infected', 'pointing_game')]:<8.3f}"
              f" {v[('clean_vs_infected', 'detector_auroc_top1pct_mass')]:>15.3f}"
              f" {v[('clean_vs_infected', 'detector_tpr_at_5pct_fpr_top1pct_mass')]:>10.3f}")
    return 0
