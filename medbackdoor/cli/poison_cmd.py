"""``medbackdoor poison preview``: poison the training split of a run config and show clean vs infected images,
and how visible every registered trigger is (PSNR, SSIM, changed pixels) on test images
(:func:`medbackdoor.preview.preview`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from medbackdoor.cli.run_cmd import add_config_args
from medbackdoor.config import load_config


def add_parser(sub) -> None:
    poison = sub.add_parser("poison", help="poisoning tools")
    verbs = poison.add_subparsers(dest="verb", required=True, parser_class=type(poison))
    p = verbs.add_parser("preview", help="poison the training split; write a clean/infected picture and counts, "
                                         "and the stealth (PSNR, SSIM) of every registered trigger")
    add_config_args(p)
    p.add_argument("--show", type=int, default=6, help="images in the picture (and test images in triggers.png)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.set_defaults(func=run_preview)


def run_preview(args: argparse.Namespace) -> int:
    from medbackdoor.preview import preview
    from medbackdoor.run import Run

    s = preview(Run.planned(load_config(args.config, args.overrides)), args.out, args.show)
    print(f"{s['poisoned']} of {s['train']} training images poisoned ({s['mode']}, {s['stage']} stage) -> "
          f"{s['train_samples']} training samples ({s['poisoning'].get('cross') or 0} of them cross samples with "
          f"their own labels), infected label {s['poisoning']['label']} {s['target']}; "
          f"trigger survives preprocessing in {s['trigger_survival']['train']:.1%} of them")
    print(f"stealth of the configured trigger on all {s['test']} test images: "
          f"{_stealth_line(s['stealth']['configured'])}")
    print(f"stealth per registered trigger (defaults; the configured kind as configured), first "
          f"{s['stealth']['images']} test images:")
    for name, entry in s["stealth"]["triggers"].items():
        print(f"  {name:<12} {'skipped: ' + entry['skipped'] if 'skipped' in entry else _stealth_line(entry)}")
    files = s["files"]
    if "preview" in files:
        print(f"wrote {files['preview']} (top: clean, bottom: infected)")
    if "triggers" in files:
        print(f"wrote {files['triggers']} (rows: clean, triggered, |difference| scaled to its maximum)")
    print(f"wrote {files['summary']}")
    return 0


def _stealth_line(s: dict) -> str:
    if s["changed_images"] == 0:
        return f"changes no pixel of {s['images']} images (PSNR inf, SSIM {s['ssim']:.4f})"
    return (f"PSNR {s['psnr']:.2f} dB (changed images), SSIM {s['ssim']:.4f}, changed pixels "
            f"{s['changed_pixels']:.3%}, changed images {s['changed_images']:.1%}")
