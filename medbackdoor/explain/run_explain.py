"""``medbackdoor explain``: the paper's Figure 1 from a run's checkpoints, plus localisation and detection numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from medbackdoor._io import for_display, save_figure, write_rows
from medbackdoor.errors import UserError
from medbackdoor.explain.cam import CAMS
from medbackdoor.explain.localise import (
    DETECTORS,
    box_masks,
    detection_scores,
    mass_in_box,
    pointing_game,
    trigger_boxes,
)
from medbackdoor.inference import predict
from medbackdoor.labels import label_index
from medbackdoor.loggers import open_loggers
from medbackdoor.run import Run


def explain_run(run: Run | str | Path, epochs: list[int] | None = None, layers: tuple[str, ...] = ("last", "middle"),
                images: int = 200, target: str = "target", method: str = "gradcam", score: str = "logit",
                dilate: int = 2, figure_image: int | None = None, batch_size: int = 32) -> dict:
    """Compute maps for clean and infected test images at each (epoch, layer); write CSV and Figure 1.

    Only the test split is built (:attr:`Run.test`); the training set is not.

    Args:
        run: the run (a folder written by ``medbackdoor run`` is opened as one).
        epochs: checkpoints to explain (default: every one kept).
        layers: ``last``, ``middle`` or module names.
        images: how many test images (the first ones whose trigger changed the input).
        target: ``target`` (the attacked class), ``predicted`` (each image's top class) or a class name.
        method: a registered saliency method.
        score: ``logit`` or ``probability``.
        dilate: px added around the trigger box for mass-in-box and the pointing game.
        figure_image: which of the chosen images Figure 1 shows (default: the first without the target class).
    """
    run = run if isinstance(run, Run) else Run(run)
    config = run.config
    have = run.epochs()
    epochs = epochs or have
    missing = [e for e in epochs if e not in have]
    if not have or missing:
        raise UserError(f"{run.path} has no checkpoint for epoch(s) {missing or epochs}; available: {have}")
    test = run.test
    names = test.label_names
    attacked = label_index(config.trigger.target, names)
    chosen = np.flatnonzero(test.survived)[:images]
    if not len(chosen):
        raise UserError("the trigger changed no test image at model resolution: nothing to localise")
    clean, infected = test.clean[chosen], np.asarray(test.triggered[chosen])
    boxes = trigger_boxes(clean, infected)
    masks = box_masks(boxes, clean.shape[-2:], dilate)
    y_true = test.labels[chosen]
    show = figure_image if figure_image is not None else int(np.argmax(y_true[:, attacked] == 0))
    device = run.device()
    rows, panels, sizes = [], {}, {}
    for epoch in epochs:
        model = run.model(epoch, device)
        for layer in layers:
            with CAMS.get(method)(model, layer, score, task=test.task) as cam:
                maps = {}
                for version, imgs in (("clean", clean), ("infected", infected)):
                    targets = _targets(target, model, imgs, attacked, device, batch_size, names)
                    maps[version] = cam(torch.from_numpy(np.ascontiguousarray(imgs)), targets, batch_size).cpu().numpy()
                sizes[layer] = cam.map_size
            rows += _rows(epoch, layer, method, maps, masks)
            panels[(epoch, layer)] = (maps["clean"][show], maps["infected"][show])
    out = run.dir.explain_dir
    write_rows(run.dir.localisation_path, rows)
    loggers = open_loggers(config.train.log, run.dir.logs_dir, None)
    try:
        figure1(out, epochs, layers, clean[show], infected[show], boxes[show], panels, sizes, loggers)
    finally:
        for logger in loggers:
            logger.close()
    return {"rows": rows, "csv": run.dir.localisation_path, "figure": run.dir.explain_figure_path,
            "images": len(chosen), "map_sizes": sizes}


def _targets(target: str, model, imgs, attacked: int, device, batch_size: int, names):
    if target == "target":
        return attacked
    if target == "predicted":
        return torch.from_numpy(predict(model, imgs, device, batch_size).argmax(1))
    try:
        return label_index(target, names)
    except UserError:
        raise UserError(f"--target must be target, predicted or a class name; valid names: "
                        f"{', '.join(names)}") from None


def _rows(epoch: int, layer: str, method: str, maps: dict, masks: np.ndarray) -> list[dict]:
    rows = []
    base = {"epoch": epoch, "layer": layer, "method": method}
    area = float(masks.reshape(len(masks), -1).mean(1).mean())
    for version, m in maps.items():
        rows.append({**base, "version": version, "quantity": "mass_in_box", "value": _mean(mass_in_box(m, masks))})
        rows.append({**base, "version": version, "quantity": "pointing_game", "value": _mean(pointing_game(m, masks))})
        rows.append({**base, "version": version, "quantity": "empty_maps", "value": float((m.max((1, 2)) == 0).mean())})
        rows.append({**base, "version": version, "quantity": "box_area_fraction", "value": area})
    for name, stat in DETECTORS.items():
        result = detection_scores(stat(maps["clean"]), stat(maps["infected"]))
        rows.append({**base, "version": "clean_vs_infected", "quantity": f"detector_auroc_{name}",
                     "value": result["auroc"]})
        rows.append({**base, "version": "clean_vs_infected", "quantity": f"detector_tpr_at_5pct_fpr_{name}",
                     "value": result["tpr_at_fpr"]})
    return rows


def _mean(values: np.ndarray) -> float:
    """Mean over the images with a non-empty map; NaN when every map is empty."""
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if len(finite) else float("nan")


def figure1(out: Path, epochs, layers, clean, infected, box, panels, sizes: dict | None = None,
            loggers: list | None = None) -> None:
    """Rows: epochs; columns: clean and infected at each layer, maps over the image, the trigger circled.

    The figure also goes to the run's loggers (``train.log``, e.g. TensorBoard's Images tab as
    ``explain/figure1`` at the last explained epoch).

    Each column title gives the layer's map size (``sizes[layer]``): a 2×2 map upsampled to the image is a flat
    wash of colour, not a broken figure.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Circle

    cols = [(layer, version) for layer in layers for version in ("clean", "infected")]
    fig, axes = plt.subplots(len(epochs), len(cols), figsize=(2.4 * len(cols), 2.4 * len(epochs)), squeeze=False)
    top, left, bottom, right = box
    centre = ((left + right - 1) / 2, (top + bottom - 1) / 2)
    radius = max(right - left, bottom - top) * 0.9 + 1.5
    for i, epoch in enumerate(epochs):
        for j, (layer, version) in enumerate(cols):
            ax = axes[i, j]
            image = clean if version == "clean" else infected
            ax.imshow(for_display(image), cmap="gray", vmin=0, vmax=255)
            ax.imshow(panels[(epoch, layer)][0 if version == "clean" else 1], cmap="jet", alpha=0.45, vmin=0, vmax=1)
            ax.add_patch(Circle(centre, radius, fill=False, color="red", linewidth=1.2))
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                side = (sizes or {}).get(layer)
                grid = f" ({side[0]}×{side[1]} map)" if side else ""
                ax.set_title(f"{version}, {layer} layer{grid}", fontsize=9)
            if j == 0:
                ax.set_ylabel(f"epoch {epoch}", fontsize=9)
    fig.suptitle("Figure 1: Grad-CAM of a clean image and its infected version (red circle: trigger)", fontsize=10)
    fig.text(0.5, 0.005, "Maps of the explained class; an all-blue panel is an empty map: nothing in that image "
             "raises the class at that layer.", ha="center", va="bottom", fontsize=7)
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    save_figure(fig, out, "figure1")
    for logger in loggers or []:
        logger.figure("explain/figure1", fig, max(epochs))
    plt.close(fig)
