"""``medbackdoor poison preview``: poison the training split of a run config and show clean vs infected images,
and how visible every registered trigger is (PSNR, SSIM, changed pixels) on test images."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from medbackdoor._io import atomic_path, save_figure, write_json
from medbackdoor.cli.run_cmd import add_config_args
from medbackdoor.config import load_config
from medbackdoor.errors import UserError
from medbackdoor.metrics import image_psnr, image_ssim, stealth
from medbackdoor.poison import TEST_STREAM
from medbackdoor.triggers import TRIGGERS, create_trigger, image_rng

STEALTH_IMAGES = 64  # test images each registered trigger is measured on


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
        "target": data.dataset.label_names[data.target], "trigger": repr(data.trigger),
        "trigger_survival": data.survival,
    }
    per_trigger = trigger_stealth(data, config, STEALTH_IMAGES)
    full = stealth(data.test.clean, data.test.triggered)
    summary["stealth"] = {
        "configured": {"trigger": repr(data.trigger), "stage": t.stage, **full},
        "triggers": {name: {k: v for k, v in entry.items() if k != "triggered"} for name, entry in per_trigger.items()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "poison_summary.json", summary)
    print(f"{summary['poisoned']} of {summary['train']} training images poisoned ({t.mode}, {t.stage} stage) -> "
          f"{summary['train_samples']} training samples, infected label one-hot {summary['target']}; "
          f"trigger survives preprocessing in {data.survival['train']:.1%} of them")
    print(f"stealth of the configured trigger on all {len(data.test)} test images: "
          f"{_stealth_line(summary['stealth']['configured'])}")
    print(f"stealth per registered trigger (defaults; the configured kind as configured), first "
          f"{min(STEALTH_IMAGES, len(data.test))} test images:")
    for name, entry in summary["stealth"]["triggers"].items():
        print(f"  {name:<12} {'skipped: ' + entry['skipped'] if 'skipped' in entry else _stealth_line(entry)}")
    if clean is not None:
        save_grid(args.out / "preview.png", clean, infected)
        print(f"wrote {args.out / 'preview.png'} (top: clean, bottom: infected)")
    k = min(args.show, STEALTH_IMAGES, len(data.test))
    if k > 0:
        save_trigger_figure(args.out, np.asarray(data.test.clean[0:k]), per_trigger)
        print(f"wrote {args.out / 'triggers.png'} (rows: clean, triggered, |difference| scaled to its maximum)")
    print(f"wrote {args.out / 'poison_summary.json'}")
    return 0


def _stealth_line(s: dict) -> str:
    if s["changed_images"] == 0:
        return f"changes no pixel of {s['images']} images (PSNR inf, SSIM {s['ssim']:.4f})"
    return (f"PSNR {s['psnr']:.2f} dB (changed images), SSIM {s['ssim']:.4f}, changed pixels "
            f"{s['changed_pixels']:.3%}, changed images {s['changed_images']:.1%}")


def trigger_stealth(data, config, n: int) -> dict[str, dict]:
    """Per registered trigger, its stealth on the first ``n`` test images (the model inputs).

    Each trigger is built with its defaults and stamped on the input images with the test split's per-image draws
    (``image_rng(attack_seed, TEST_STREAM, row)``); the configured kind is the configured trigger, read from the
    test split as the run sees it (so at the ``source`` stage too). A trigger that cannot be built or placed on
    an image of this size is ``{"skipped": reason}``. Entries also hold ``triggered`` (the K×H×W images).
    """
    rows = np.asarray(data.test.rows[:n])
    clean = np.asarray(data.test.clean[0 : len(rows)])
    size = config.image_size
    out: dict[str, dict] = {}
    for name in TRIGGERS.names():
        try:
            if name == config.trigger.kind:
                trigger, triggered = data.trigger, np.asarray(data.test.triggered[0 : len(rows)])
            else:
                trigger = create_trigger(name)
                trigger.check_fits(size, size)
                triggered = np.stack([trigger(img, image_rng(config.attack_seed, TEST_STREAM, int(r)))
                                      for img, r in zip(clean, rows)]) if len(rows) else clean.copy()
        except (UserError, ValueError) as exc:
            out[name] = {"skipped": f"cannot build or place it on a {size}×{size} px image: {exc}"}
            continue
        stage = config.trigger.stage if name == config.trigger.kind else "input"
        out[name] = {"trigger": repr(trigger), "stage": stage, **stealth(clean, triggered), "triggered": triggered}
    return out


def save_trigger_figure(folder: Path, clean: np.ndarray, per_trigger: dict[str, dict]) -> None:
    """``triggers.png``: one column per trigger (column ``j`` on test image ``j mod len(clean)``), rows clean,
    triggered and the absolute difference divided by its maximum; titled with the image's PSNR and SSIM."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(per_trigger)
    fig, axes = plt.subplots(3, len(names), figsize=(2.3 * len(names), 7.2), squeeze=False)
    for j, name in enumerate(names):
        entry, col = per_trigger[name], axes[:, j]
        for ax in col:
            ax.set_xticks([])
            ax.set_yticks([])
        x = clean[j % len(clean)]
        col[0].imshow(x, cmap="gray", vmin=0, vmax=255)
        if "skipped" in entry:
            col[0].set_title(f"{name}\nskipped", fontsize=8)
            col[1].text(0.5, 0.5, "\n".join(_wrap(entry["skipped"], 28)), ha="center", va="center",
                        fontsize=6, transform=col[1].transAxes)
            col[2].axis("off")
            col[1].axis("off")
            continue
        y = entry["triggered"][j % len(clean)]
        diff = np.abs(x.astype(np.int16) - y.astype(np.int16))
        peak = int(diff.max())
        col[0].set_title(f"{name}\nPSNR {image_psnr(x, y):.1f} dB  SSIM {image_ssim(x, y):.3f}", fontsize=8)
        col[1].imshow(y, cmap="gray", vmin=0, vmax=255)
        col[2].imshow(diff / max(peak, 1), cmap="magma", vmin=0, vmax=1)
        col[2].set_xlabel(f"max |Δ| = {peak}", fontsize=7)
    for ax, label in zip(axes[:, 0], ("clean", "triggered", "|Δ| / max |Δ|")):
        ax.set_ylabel(label, fontsize=8)
    fig.tight_layout()
    try:
        save_figure(fig, folder, "triggers", formats=("png",))
    finally:
        plt.close(fig)


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width) or [""]


def save_grid(path: Path, top: np.ndarray, bottom: np.ndarray, scale: int = 3) -> None:
    """Two rows of images side by side, enlarged ``scale`` times with nearest neighbour, as a PNG."""
    grid = np.concatenate([np.concatenate(list(top), 1), np.concatenate(list(bottom), 1)], 0)
    big = Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
    with atomic_path(path, suffix=".png") as tmp:
        big.save(tmp, format="PNG")
