"""What ``medbackdoor poison preview`` shows: a run's poisoned training split (clean vs infected images and counts)
and how visible every registered trigger is (PSNR, SSIM, changed pixels) on the run's test images.

:func:`preview` computes and writes it all (``poison_summary.json``, ``preview.png``, ``triggers.png``); the CLI
only prints the summary it returns.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from medbackdoor._io import atomic_path, for_display, save_figure, write_json
from medbackdoor.errors import UserError
from medbackdoor.metrics import image_psnr, image_ssim, stealth
from medbackdoor.poison.wrapper import TEST_STREAM
from medbackdoor.run import Run
from medbackdoor.triggers import TRIGGERS, create_trigger, image_rng

STEALTH_IMAGES = 64  # test images each registered trigger is measured on


def preview(run: Run, out: str | Path, show: int = 6) -> dict:
    """Look at ``run``'s poisoned training split (a run made, or :meth:`Run.planned` of a config) and measure
    every trigger's stealth; write the files into ``out``.

    Returns the summary written to ``poison_summary.json`` (counts, survival, the configured trigger's stealth on
    every test image and each registered trigger's on the first :data:`STEALTH_IMAGES`), plus ``files``: what was
    written, by name.
    """
    out = Path(out)
    config, data = run.config, run.data
    t, train = config.trigger, data.train
    order = train.order[:show]
    summary = {
        "dataset": data.dataset.name, **data.counts(), "mode": t.mode, "stage": t.stage,
        "target": data.dataset.label_names[data.target], "trigger": repr(data.trigger),
        "trigger_survival": data.survival, "poisoning": data.poisoning(),
    }
    per_trigger = trigger_stealth(data, config, STEALTH_IMAGES)
    summary["stealth"] = {
        "configured": {"trigger": repr(data.trigger), "stage": t.stage,
                       **stealth(data.test.clean, data.test.triggered)},
        "triggers": {name: {k: v for k, v in entry.items() if k != "triggered"} for name, entry in per_trigger.items()},
        "images": min(STEALTH_IMAGES, len(data.test)),
    }
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    if len(order):
        clean = np.stack([train.base[int(i)]["image"] for i in order])
        infected = np.stack([train.infect(int(i))["image"] for i in order])
        files["preview"] = save_grid(out / "preview.png", clean, infected)
    k = min(show, STEALTH_IMAGES, len(data.test))
    if k > 0:
        files["triggers"] = save_trigger_figure(out, np.asarray(data.test.clean[0:k]), per_trigger)
    write_json(out / "poison_summary.json", summary)
    files["summary"] = out / "poison_summary.json"
    return {**summary, "files": files}


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


def save_trigger_figure(folder: Path, clean: np.ndarray, per_trigger: dict[str, dict]) -> Path:
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
        col[0].imshow(for_display(x), cmap="gray", vmin=0, vmax=255)
        if "skipped" in entry:
            col[0].set_title(f"{name}\nskipped", fontsize=8)
            col[1].text(0.5, 0.5, "\n".join(_wrap(entry["skipped"], 28)), ha="center", va="center",
                        fontsize=6, transform=col[1].transAxes)
            col[2].axis("off")
            col[1].axis("off")
            continue
        y = entry["triggered"][j % len(clean)]
        diff = np.abs(x.astype(np.int16) - y.astype(np.int16))
        if diff.ndim == 3:  # colour: the largest change over the channels
            diff = diff.max(0)
        peak = int(diff.max())
        col[0].set_title(f"{name}\nPSNR {image_psnr(x, y):.1f} dB  SSIM {image_ssim(x, y):.3f}", fontsize=8)
        col[1].imshow(for_display(y), cmap="gray", vmin=0, vmax=255)
        col[2].imshow(diff / max(peak, 1), cmap="magma", vmin=0, vmax=1)
        col[2].set_xlabel(f"max |Δ| = {peak}", fontsize=7)
    for ax, label in zip(axes[:, 0], ("clean", "triggered", "|Δ| / max |Δ|")):
        ax.set_ylabel(label, fontsize=8)
    fig.tight_layout()
    try:
        save_figure(fig, folder, "triggers", formats=("png",))
    finally:
        plt.close(fig)
    return Path(folder) / "triggers.png"


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width) or [""]


def save_grid(path: Path, top: np.ndarray, bottom: np.ndarray, scale: int = 3) -> Path:
    """Two rows of images side by side, enlarged ``scale`` times with nearest neighbour, as a PNG."""
    top, bottom = [for_display(x) for x in top], [for_display(x) for x in bottom]
    grid = np.concatenate([np.concatenate(top, 1), np.concatenate(bottom, 1)], 0)
    big = Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
    with atomic_path(path, suffix=".png") as tmp:
        big.save(tmp, format="PNG")
    return path
