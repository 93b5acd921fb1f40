"""Adaptive attacks (adaptive-blend, adaptive-patch) and the source-specific conditional backdoor.

The expected images are computed here with plain NumPy from each trigger's definition (docs/attacks.md, "Adaptive
attacks"), never with the trigger's own methods or :func:`~medbackdoor.triggers.apply_trigger`:

* every trigger is Eq. 1, ``x' = x ⊙ (1 − m) + r ⊙ m`` (r scaled by 255 on uint8 images, which are then rounded);
  the masks are float32 (:meth:`Trigger.pattern`);
* an image's random choices come from its generator ``image_rng(seed, stream, row)`` (the documented seeding);
  where a test re-draws them it re-implements the documented draw: ``shown`` distinct pieces (tiles or patches,
  numbered row by row) taken uniformly without replacement, ``rng.choice(pieces, shown, replace=False)``;
* the blend pattern ``r`` is the blend trigger's noise: uniform in [0, 1), float32, ``default_rng(seed)``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from medbackdoor.errors import UserError
from medbackdoor.experiment import build_run_data
from medbackdoor.labels import LABELS
from medbackdoor.metrics import backdoor_metrics
from medbackdoor.poison import TEST_STREAM, TRAIN_STREAM, ImageSplit, PoisonedDataset
from medbackdoor.poison.stage import triggered_images
from medbackdoor.poison.wrapper import CROSS_STREAM
from medbackdoor.triggers import AdaptiveBlend, AdaptivePatch, ConditionalTrigger, create_trigger, image_rng

EFF = LABELS.index("Effusion")


def _noise(seed: int, h: int, w: int) -> np.ndarray:
    return np.random.default_rng(seed).random((h, w), np.float32)  # the blend trigger's noise pattern


def _eq1(x: np.ndarray, r: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Eq. 1 written out: ``x ⊙ (1 − m) + r ⊙ m`` with ``r`` in [0, 1] (× 255 and rounded for a uint8 image)."""
    x = np.asarray(x)
    scale = 255.0 if x.dtype == np.uint8 else 1.0
    out = x.astype(np.float64) * (1.0 - m) + scale * r.astype(np.float64) * m
    return np.clip(np.rint(out), 0, 255).astype(np.uint8) if x.dtype == np.uint8 else out


def _drawn(rng: np.random.Generator, pieces: int, shown: int) -> list[int]:
    """The documented per-image draw: ``shown`` distinct piece numbers out of ``pieces``, uniform, no replacement."""
    return [int(k) for k in rng.choice(pieces, size=shown, replace=False)]


def _even_edges(n: int, side: int) -> list[int]:
    """Tile edges of a side-long grid over n pixels when ``side`` divides ``n``: every tile ``n / side`` wide."""
    assert n % side == 0
    return [k * n // side for k in range(side + 1)]


def _blend_mask(rows: list[int], cols: list[int], tiles: list[int], alpha: float) -> np.ndarray:
    """``alpha`` on the given tiles (numbered row by row) of the grid with these edges, 0 elsewhere."""
    side = len(cols) - 1
    m = np.zeros((rows[-1], cols[-1]), np.float32)
    for k in tiles:
        i, j = divmod(k, side)
        m[rows[i] : rows[i + 1], cols[j] : cols[j + 1]] = alpha
    return m


def _adaptive_blend(x: np.ndarray, rng: np.random.Generator | None, *, pieces: int = 16, shown: int = 8,
                    alpha: float = 0.15, test_alpha: float = 0.2, seed: int = 0) -> np.ndarray:
    """Adaptive-blend by its definition, on an image whose sides the √pieces grid divides: with ``rng`` (a poisoned
    or cover training image) the ``shown`` tiles drawn from it at ``alpha``; with None (a test image) the whole
    pattern at ``test_alpha``."""
    h, w = np.asarray(x).shape
    if rng is None:
        m = np.full((h, w), test_alpha, np.float32)
    else:
        side = math.isqrt(pieces)
        m = _blend_mask(_even_edges(h, side), _even_edges(w, side), _drawn(rng, pieces, shown), alpha)
    return _eq1(x, _noise(seed, h, w), m)


def _patch_layout(h: int, w: int, *, patches: int = 4, size: int = 4, seed: int = 0) -> list:
    """Each patch's ``(top, left, stamp)`` on an h×w image, after checking the layout's definition.

    Where in its cell each patch sits, and its bits, are drawn from ``seed`` by a scheme the docs leave open, so
    they are read off the test-time image of a mid-gray image at ``test_alpha`` 1 (every stamp pixel, 0 or 1,
    differs from 0.5) once these are checked: patch i is one size×size square of 0/1 pixels inside cell i (row by
    row) of a ⌈√patches⌉-sided grid of ``h // cells`` × ``w // cells`` cells, and no other pixel changes.
    """
    gray = np.full((h, w), 0.5)
    full = AdaptivePatch(patches=patches, size=size, shown=1, test_alpha=1.0, seed=seed)(
        gray, image_rng(0, TEST_STREAM, 0))
    left_over = full != 0.5
    cells = math.ceil(math.sqrt(patches))
    ch, cw = h // cells, w // cells
    layout = []
    for i in range(patches):
        row, col = divmod(i, cells)
        cell = left_over[row * ch : (row + 1) * ch, col * cw : (col + 1) * cw]
        rows, cols = np.flatnonzero(cell.any(1)), np.flatnonzero(cell.any(0))
        assert cell.sum() == size * size and rows[-1] - rows[0] == size - 1 and cols[-1] - cols[0] == size - 1
        top, left = row * ch + int(rows[0]), col * cw + int(cols[0])
        stamp = full[top : top + size, left : left + size].astype(np.float32)
        assert set(np.unique(stamp)) <= {0.0, 1.0}
        layout.append((top, left, stamp))
        left_over[top : top + size, left : left + size] = False
    assert not left_over.any()  # nothing outside the patches' cells
    return layout


def _adaptive_patch(x: np.ndarray, layout, which, alpha: float) -> np.ndarray:
    """Adaptive-patch by its definition: the patches numbered in ``which`` at opacity ``alpha``, no other pixel."""
    h, w = np.asarray(x).shape
    m, r = np.zeros((h, w), np.float32), np.zeros((h, w), np.float32)
    for i, (top, left, stamp) in enumerate(layout):
        if i in which:
            s = len(stamp)
            m[top : top + s, left : left + s] = alpha
            r[top : top + s, left : left + s] = stamp
    return _eq1(x, r, m)


def _square(x: np.ndarray, size: int = 3) -> np.ndarray:
    """The paper's square (the conditional trigger's default base): black, size×size, top-left at
    ``((H − s) // 2, (W − s) // 2)``."""
    out = np.array(x)
    top, left = (out.shape[0] - size) // 2, (out.shape[1] - size) // 2
    out[top : top + size, left : left + size] = 0
    return out


def test_adaptive_blend_test_image_is_the_whole_pattern_at_test_alpha():
    x = np.random.default_rng(5).random((32, 32))
    out = AdaptiveBlend(test_alpha=0.2, seed=3)(x, image_rng(0, TEST_STREAM, 1))
    np.testing.assert_allclose(out, 0.8 * x + 0.2 * _noise(3, 32, 32).astype(np.float64), atol=1e-6)
    u8 = np.random.default_rng(6).integers(0, 256, (16, 24), dtype=np.uint8)
    out = AdaptiveBlend(test_alpha=0.2, seed=3)(u8, image_rng(0, TEST_STREAM, 2))
    a = float(np.float32(0.2))  # the mask is float32
    expected = np.rint((1 - a) * u8 + a * 255 * _noise(3, 16, 24).astype(np.float64))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)


def test_adaptive_blend_training_image_shows_the_drawn_tiles_at_alpha():
    """A 32 px image, 16 tiles of 8×8 px: the 8 tiles drawn from the image's generator are blended at α = 0.15,
    the other 8 are left as they are."""
    x = np.random.default_rng(7).random((32, 32))
    trig = AdaptiveBlend(pieces=16, shown=8, alpha=0.15, seed=3)
    r = _noise(3, 32, 32).astype(np.float64)
    touched = []
    for row in (4, 5):
        out = trig.poison_transform(x, image_rng(0, TRAIN_STREAM, row))
        tiles = _drawn(image_rng(0, TRAIN_STREAM, row), 16, 8)
        expected = x.copy()
        for k in tiles:
            t = (slice(8 * (k // 4), 8 * (k // 4) + 8), slice(8 * (k % 4), 8 * (k % 4) + 8))
            expected[t] = 0.85 * x[t] + 0.15 * r[t]
        np.testing.assert_allclose(out, expected, atol=1e-6)
        touched.append(sorted(tiles))
    assert touched[0] != touched[1]  # a new draw of tiles per image


def test_adaptive_blend_tiles_on_a_grid_that_does_not_divide_the_image():
    """The tile grid's edge k sits at k·H/√pieces rounded to the nearest pixel: on 22×20 px with 9 tiles the rows
    are cut at 7 and 15 (22/3 = 7.33, 44/3 = 14.67), the columns at 7 and 13 (6.67, 13.33). With ``shown`` 1 each
    training image changes exactly one whole tile, and over 60 images every tile turns up."""
    rows, cols = [0, 7, 15, 22], [0, 7, 13, 20]
    boxes = {(rows[i], cols[j], rows[i + 1], cols[j + 1]) for i in range(3) for j in range(3)}
    trig = AdaptiveBlend(pieces=9, shown=1, alpha=0.5, seed=1)
    x = np.random.default_rng(8).random((22, 20))
    r = _noise(1, 22, 20).astype(np.float64)
    seen = set()
    for row in range(60):
        out = trig.poison_transform(x, image_rng(2, TRAIN_STREAM, row))
        changed = out != x
        ys, xs = np.flatnonzero(changed.any(1)), np.flatnonzero(changed.any(0))
        box = (int(ys[0]), int(xs[0]), int(ys[-1]) + 1, int(xs[-1]) + 1)
        assert box in boxes and changed.sum() == (box[2] - box[0]) * (box[3] - box[1])
        np.testing.assert_allclose(out[changed], 0.5 * x[changed] + 0.5 * r[changed], atol=1e-6)
        m = _blend_mask(rows, cols, _drawn(image_rng(2, TRAIN_STREAM, row), 9, 1), 0.5)
        np.testing.assert_allclose(out, _eq1(x, r, m), atol=1e-6)
        seen.add(box)
    assert seen == boxes
    with pytest.raises(UserError, match="square number"):
        AdaptiveBlend(pieces=8)


@pytest.mark.parametrize(("patches", "size", "h", "w"), [(4, 4, 32, 32), (3, 3, 24, 20)])
def test_adaptive_patch_test_image_is_every_patch_at_test_alpha(patches, size, h, w):
    """One patch per cell of the ⌈√patches⌉ grid (3 patches: the top two cells and the bottom-left one; checked by
    :func:`_patch_layout`), at the same places on every image; a test image gets all of them at ``test_alpha``."""
    layout = _patch_layout(h, w, patches=patches, size=size, seed=1)
    trig = AdaptivePatch(patches=patches, size=size, shown=1, alpha=0.5, test_alpha=0.6, seed=1)
    x = np.random.default_rng(9).random((h, w))
    for row in (0, 1):
        out = trig(x, image_rng(0, TEST_STREAM, row))
        np.testing.assert_allclose(out, _adaptive_patch(x, layout, range(patches), 0.6), atol=1e-6)
    with pytest.raises(UserError, match="do not fit"):
        AdaptivePatch(size=20).check_fits(32, 32)


def test_adaptive_patch_training_image_shows_the_drawn_patches_at_alpha():
    """Two of the four patches, drawn per image, at α = 0.5 on a uint8 image: ``rint(0.5 x + 0.5 · 255 · bit)``."""
    layout = _patch_layout(32, 32, seed=1)
    trig = AdaptivePatch(patches=4, size=4, shown=2, alpha=0.5, test_alpha=1.0, seed=1)
    x = np.random.default_rng(10).integers(0, 256, (32, 32), dtype=np.uint8)
    drawn = []
    for row in range(4):
        out = trig.poison_transform(x, image_rng(3, TRAIN_STREAM, row))
        which = _drawn(image_rng(3, TRAIN_STREAM, row), 4, 2)
        expected = x.copy()
        for i in which:
            top, left, stamp = layout[i]
            patch = expected[top : top + 4, left : left + 4].astype(np.float64)
            expected[top : top + 4, left : left + 4] = np.rint(0.5 * patch + 0.5 * 255 * stamp)
        np.testing.assert_array_equal(out, expected)
        drawn.append(sorted(which))
    assert len({tuple(d) for d in drawn}) > 1  # a new draw of patches per image


def test_input_stage_training_images_get_the_partial_trigger_test_images_the_whole():
    trig = AdaptiveBlend(seed=2)
    clean = np.random.default_rng(0).integers(0, 256, (3, 32, 32), dtype=np.uint8)
    rows = np.array([4, 9, 11])
    train, _ = triggered_images(None, rows, clean, trig, "input", 0, TRAIN_STREAM)
    test, _ = triggered_images(None, rows, clean, trig, "input", 0, TEST_STREAM)
    for k, r in enumerate(rows):
        np.testing.assert_array_equal(train[k], _adaptive_blend(clean[k], image_rng(0, TRAIN_STREAM, r), seed=2))
        np.testing.assert_array_equal(test[k], _adaptive_blend(clean[k], None, seed=2))


def _split(labels: np.ndarray, size: int = 32) -> ImageSplit:
    n = len(labels)
    images = np.random.default_rng(1).integers(0, 256, (n, size, size), dtype=np.uint8)
    return ImageSplit(images, labels, np.arange(n), np.arange(n))


def test_cover_samples_keep_their_labels_and_carry_the_partial_trigger():
    """Poisoned images get the partial trigger drawn from their TRAIN_STREAM generator, cover images the same kind
    of partial trigger drawn from their CROSS_STREAM generator; cover images keep their labels."""
    labels = np.zeros((40, 14), np.float32)
    labels[::3, EFF] = 1
    base = _split(labels)
    layout = _patch_layout(32, 32, seed=0)
    ds = PoisonedDataset(base, AdaptivePatch(seed=0), fraction=0.1, mode="replace", seed=0, label_names=LABELS)
    assert len(ds.order) == 4 and len(ds.cross) == 8 and not set(ds.cross) & set(ds.order)  # ρN = 4, 2 covers each
    for i in ds.cross:
        item, clean = ds[int(i)], base[int(i)]
        np.testing.assert_array_equal(item["labels"], labels[i])
        which = _drawn(image_rng(0, CROSS_STREAM, clean["index"]), 4, 2)
        np.testing.assert_array_equal(item["image"], _adaptive_patch(clean["image"], layout, which, 0.5))
    for i in ds.order:
        item, clean = ds[int(i)], base[int(i)]
        assert item["labels"][LABELS.index("Atelectasis")] == 1 and item["labels"].sum() == 1
        which = _drawn(image_rng(0, TRAIN_STREAM, clean["index"]), 4, 2)
        np.testing.assert_array_equal(item["image"], _adaptive_patch(clean["image"], layout, which, 0.5))


def test_conditional_poisons_only_source_positive_images_and_covers_the_others():
    labels = np.zeros((60, 14), np.float32)
    labels[::4, EFF] = 1  # 15 Effusion-positive images
    trig = ConditionalTrigger(source="Effusion", base="square", size=3, cover_ratio=1.0)
    trig.bind_labels(LABELS)
    np.testing.assert_array_equal(trig.condition(labels), np.arange(60) % 4 == 0)
    np.testing.assert_array_equal(trig.cross_candidates(labels), np.arange(60) % 4 != 0)
    base = _split(labels)
    ds = PoisonedDataset(base, trig, fraction=0.1, mode="replace", seed=0,
                         candidates=np.flatnonzero(labels[:, EFF] > 0), label_names=LABELS)
    assert len(ds.order) == 6 and (labels[ds.order, EFF] == 1).all()  # round(0.1 · 60)
    assert len(ds.cross) == 6 and (labels[ds.cross, EFF] == 0).all()
    for i in [*ds.order, *ds.cross]:  # poisoned and cover images alike get the whole square (no partial trigger)
        np.testing.assert_array_equal(ds[int(i)]["image"], _square(base[int(i)]["image"]))
    x = np.full((32, 32), 200, np.uint8)
    np.testing.assert_array_equal(trig(x, image_rng(0, 0, 0)), _square(x))
    with pytest.raises(UserError, match="not a label"):
        ConditionalTrigger(source="Fracture").bind_labels(LABELS)
    with pytest.raises(UserError, match="changes no pixel"):
        ConditionalTrigger(base="label-combination")
def test_metrics_on_and_off_the_condition_by_hand():
    target = LABELS.index("Atelectasis")
    y = np.zeros((6, 14))
    y[5, target] = 1  # not eligible for ASR
    s = np.zeros((6, 14))
    s[:, target] = [0.95, 0.2, 0.7, 0.9, 0.1, 0.99]
    condition = np.array([True, True, True, False, False, False])
    m = backdoor_metrics(y, s, s, target, thresholds=(0.6, 0.9), condition=condition)
    assert m["asr"] == {"0.6": pytest.approx(2 / 3), "0.9": pytest.approx(1 / 3)}  # rows 0..2
    assert m["asr_off"] == {"0.6": pytest.approx(1 / 2), "0.9": pytest.approx(1 / 2)}  # rows 3, 4 (5 has t)
    plain = backdoor_metrics(y, s, s, target, thresholds=(0.6,))
    assert plain["asr"]["0.6"] == pytest.approx(3 / 5) and np.isnan(plain["asr_off"]["0.6"])


@pytest.fixture
def tiny10(tiny):
    """The tiny config (conftest) at ρ = 0.1."""
    return lambda *extra: tiny("trigger.fraction=0.1", *extra)


def _expected(kind: str, x: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
    """The image each registered attack (default options) makes of ``x``: with ``rng``, a poisoned or cover training
    image (the partial trigger drawn from it); with None, a test image (the whole trigger)."""
    if kind == "adaptive-blend":  # 16 tiles, 8 shown at 0.15; whole at 0.2; pattern seed 0
        return _adaptive_blend(x, rng)
    if kind == "adaptive-patch":  # 4 patches of 4 px, 2 shown at 0.5; all 4 at 1.0; seed 0
        layout = _patch_layout(*x.shape)
        return _adaptive_patch(x, layout, range(4) if rng is None else _drawn(rng, 4, 2), 1.0 if rng is None else 0.5)
    return _square(x)  # conditional: the whole 3×3 black square, training and test images alike


@pytest.mark.parametrize("kind", ["adaptive-blend", "adaptive-patch", "conditional"])
def test_run_data_poisons_covers_and_scores_each_adaptive_attack(tiny10, kind):
    """A run's data: the appended poisoned copies carry the training (partial) trigger, the appended cover copies
    the same kind of partial trigger from their own generator, the test split the whole trigger."""
    config = tiny10(f"trigger.kind={kind}", "trigger.mode=append")
    data = build_run_data(config, progress=False)
    train, test = data.train, data.test
    labels = train.base.labels_array()
    cover = {"adaptive-blend": 1, "adaptive-patch": 2, "conditional": 1}[kind]
    assert len(train.order) > 0 and len(train.cross) == cover * len(train.order)
    if kind == "conditional":
        assert (labels[train.order, EFF] > 0).all() and (labels[train.cross, EFF] == 0).all()
        np.testing.assert_array_equal(test.condition, test.labels[:, EFF] > 0)
    else:
        assert test.condition is None
    n, k, seed = len(train.base), len(train.order), config.attack_seed
    for copy, position, stream in ((n, train.order[0], TRAIN_STREAM), (n + k, train.cross[0], CROSS_STREAM)):
        clean = train.base[int(position)]
        rng = image_rng(seed, stream, clean["index"])
        np.testing.assert_array_equal(train[copy]["image"], _expected(kind, clean["image"], rng))
    for j in (0, len(test) - 1):
        np.testing.assert_array_equal(test.triggered[j], _expected(kind, np.asarray(test.clean[j]), None))


def test_conditional_run_writes_off_condition_asr(tiny10, tmp_path):
    import csv

    from medbackdoor.train import run

    manifest = run(tiny10("trigger.kind=conditional"), tmp_path / "run", progress=False)
    assert manifest.poisoning["test_condition"] > 0
    with open(tmp_path / "run" / "metrics.csv") as f:
        row = next(csv.DictReader(f))
    assert {"asr_0.6", "asr_off_0.6", "asr_off_0.9"} <= set(row)
    pred = np.load(tmp_path / "run" / "predictions" / "epoch_001.npz")
    cond = pred["condition"].astype(bool)
    y, s, t = pred["y_true"], pred["score_triggered"], int(pred["target"])
    off = ~cond & (y[:, t] == 0)
    assert float(row["asr_off_0.6"]) == pytest.approx(float((s[off, t] >= 0.6).mean()))
    on = cond & (y[:, t] == 0)
    assert float(row["asr_0.6"]) == pytest.approx(float((s[on, t] >= 0.6).mean()))


def test_registered_with_defaults():
    assert isinstance(create_trigger("adaptive-blend"), AdaptiveBlend)
    assert create_trigger("adaptive-patch").cross_ratio == 2.0
    assert create_trigger("conditional", base="patch").inner.location == "corner"  # the base's own default


def test_attack_table_shows_the_off_condition_asr_of_a_conditional_trigger(tmp_path):
    import csv
    import json

    from medbackdoor.config import dump_config, load_config
    from medbackdoor.report.build import build_report

    def fake(name, overrides, off=None):
        folder = tmp_path / "runs" / name
        folder.mkdir(parents=True)
        (folder / "config.yaml").write_text(dump_config(load_config(overrides=overrides)))
        off = off or [[], []]
        cols = ["asr_0.6", "asr_0.9", "auroc_tt", "auroc_nn", "auroc_tn"]
        cols += ["asr_off_0.6", "asr_off_0.9"] if off[0] else []
        rows = [[0.9, 0.8, 0.95, 0.8, 0.6] + off[0], [0.95, 0.85, 0.97, 0.81, 0.6] + off[1]]
        (folder / "metrics.csv").write_text("epoch," + ",".join(cols) + "\n" + "".join(
            f"{i}," + ",".join(map(str, r)) + "\n" for i, r in enumerate(rows, 1)))
        (folder / "manifest.json").write_text(json.dumps({"status": "complete"}))

    fake("conditional", ["trigger.kind=conditional"], off=[[0.30, 0.10], [0.20, 0.05]])
    fake("square", ["trigger.kind=square"])
    fake("clean", ["trigger.fraction=0"])
    build_report(tmp_path)
    with open(tmp_path / "report" / "attacks.csv") as f:
        table = {r[""]: r for r in csv.DictReader(f)}
    assert table["kind=conditional"]["ASR off the condition (p=0.6)"].startswith("0.300")  # max over the epochs
    assert table["kind=conditional"]["ASR off the condition (p=0.9)"].startswith("0.100")
    assert table["kind=square"]["ASR off the condition (p=0.6)"] == "–"
