"""Adaptive attacks (adaptive-blend, adaptive-patch) and the source-specific conditional backdoor, each checked
against the formula written out here, not against the helpers the triggers use."""

from __future__ import annotations

import numpy as np
import pytest

from medbackdoor.errors import UserError
from medbackdoor.experiment import build_run_data
from medbackdoor.labels import LABELS
from medbackdoor.metrics import backdoor_metrics
from medbackdoor.poison import TEST_STREAM, TRAIN_STREAM, ImageSplit, PoisonedDataset
from medbackdoor.poison.stage import triggered_images
from medbackdoor.triggers import AdaptiveBlend, AdaptivePatch, ConditionalTrigger, create_trigger, image_rng

EFF = LABELS.index("Effusion")


def _noise(seed: int, h: int, w: int) -> np.ndarray:
    return np.random.default_rng(seed).random((h, w), np.float32)  # the blend trigger's noise pattern


def test_adaptive_blend_test_image_is_the_whole_pattern_at_test_alpha():
    x = np.random.default_rng(5).random((32, 32))
    out = AdaptiveBlend(test_alpha=0.2, seed=3)(x, image_rng(0, TEST_STREAM, 1))
    expected = 0.8 * x + 0.2 * _noise(3, 32, 32).astype(np.float64)
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_adaptive_blend_training_image_shows_half_the_tiles_at_alpha():
    x = np.zeros((32, 32))
    trig = AdaptiveBlend(pieces=16, shown=8, alpha=0.15, seed=3)
    out = trig.poison_transform(x, image_rng(0, TRAIN_STREAM, 4))
    r = _noise(3, 32, 32).astype(np.float64)
    tiles = [(slice(8 * i, 8 * i + 8), slice(8 * j, 8 * j + 8)) for i in range(4) for j in range(4)]
    on = [t for t in tiles if np.abs(out[t]).sum() > 0]
    assert len(on) == 8
    for t in tiles:
        np.testing.assert_allclose(out[t], 0.15 * r[t] if t in on else 0.0, atol=1e-6)
    other = trig.poison_transform(x, image_rng(0, TRAIN_STREAM, 5))  # a new draw of tiles per image
    assert [t for t in tiles if np.abs(other[t]).sum() > 0] != on


def test_adaptive_patch_places_patches_in_separate_cells():
    trig = AdaptivePatch(patches=4, size=4, shown=2, alpha=0.5, test_alpha=1.0, seed=1)
    x = np.full((32, 32), 0.5)
    full = trig(x, image_rng(0, TEST_STREAM, 0))
    changed = full != x
    # one 4×4 block of changed-or-kept pixels per 16×16 quadrant (a binary patch on mid gray changes every pixel)
    for qi in range(2):
        for qj in range(2):
            block = changed[16 * qi : 16 * qi + 16, 16 * qj : 16 * qj + 16]
            rows, cols = np.flatnonzero(block.any(1)), np.flatnonzero(block.any(0))
            assert block.sum() == 16 and rows[-1] - rows[0] == 3 and cols[-1] - cols[0] == 3
    assert set(np.unique(full[changed])) <= {0.0, 1.0}
    part = trig.poison_transform(x, image_rng(0, TRAIN_STREAM, 0))
    assert (part != x).sum() == 2 * 16  # two of the four patches
    assert set(np.round(np.unique(part[part != x]), 6)) <= {0.25, 0.75}  # 0.5·0.5 + 0.5·{0, 1}
    assert ((part != x) <= changed).all()  # at the same places as at test time
    with pytest.raises(UserError, match="do not fit"):
        AdaptivePatch(size=20).check_fits(32, 32)


def test_input_stage_training_images_get_the_partial_trigger_test_images_the_whole(tmp_path):
    trig = AdaptiveBlend(seed=2)
    clean = np.random.default_rng(0).integers(0, 256, (3, 32, 32), dtype=np.uint8)
    rows = np.array([4, 9, 11])
    train, _ = triggered_images(None, rows, clean, trig, "input", 0, TRAIN_STREAM)
    test, _ = triggered_images(None, rows, clean, trig, "input", 0, TEST_STREAM)
    for k, r in enumerate(rows):
        np.testing.assert_array_equal(train[k], trig.poison_transform(clean[k], image_rng(0, TRAIN_STREAM, r)))
        np.testing.assert_array_equal(test[k], trig(clean[k], image_rng(0, TEST_STREAM, r)))
    assert (train != test).any()


def _split(labels: np.ndarray, size: int = 32) -> ImageSplit:
    n = len(labels)
    images = np.random.default_rng(1).integers(0, 256, (n, size, size), dtype=np.uint8)
    return ImageSplit(images, labels, np.arange(n), np.arange(n))


def test_cover_samples_keep_their_labels_and_carry_the_partial_trigger():
    labels = np.zeros((40, 14), np.float32)
    labels[::3, EFF] = 1
    base = _split(labels)
    ds = PoisonedDataset(base, AdaptivePatch(seed=0), fraction=0.1, mode="replace", seed=0)
    assert len(ds.order) == 4 and len(ds.cross) == 8 and not set(ds.cross) & set(ds.order)
    for i in ds.cross:
        item = ds[int(i)]
        np.testing.assert_array_equal(item["labels"], labels[i])
        assert 0 < (item["image"] != base[int(i)]["image"]).sum() <= 2 * 16
    for i in ds.order:
        item = ds[int(i)]
        assert item["labels"][LABELS.index("Atelectasis")] == 1 and item["labels"].sum() == 1
        assert (item["image"] != base[int(i)]["image"]).sum() <= 2 * 16


def test_conditional_poisons_only_source_positive_images_and_covers_the_others():
    labels = np.zeros((60, 14), np.float32)
    labels[::4, EFF] = 1  # 15 Effusion-positive images
    trig = ConditionalTrigger(source="Effusion", base="square", size=3, cover_ratio=1.0)
    trig.bind_labels(LABELS)
    ds = PoisonedDataset(_split(labels), trig, fraction=0.1, mode="replace", seed=0,
                         candidates=np.flatnonzero(labels[:, EFF] > 0))
    assert len(ds.order) == 6 and (labels[ds.order, EFF] == 1).all()
    assert len(ds.cross) == 6 and (labels[ds.cross, EFF] == 0).all()
    x = np.full((32, 32), 200, np.uint8)
    out = trig(x, image_rng(0, 0, 0))
    assert (out != x).sum() == 9 and (out[out != x] == 0).all()  # the inner 3×3 black square
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


@pytest.mark.parametrize("kind", ["adaptive-blend", "adaptive-patch", "conditional"])
def test_run_data_poisons_covers_and_scores_each_adaptive_attack(tiny10, kind):
    data = build_run_data(tiny10(f"trigger.kind={kind}", "trigger.mode=append"), progress=False)
    train, test = data.train, data.test
    labels = train.base.labels_array()
    assert len(train.order) > 0 and len(train.cross) == round(train.trigger.cross_ratio * len(train.order))
    if kind == "conditional":
        assert (labels[train.order, EFF] > 0).all() and (labels[train.cross, EFF] == 0).all()
        np.testing.assert_array_equal(test.condition, test.labels[:, EFF] > 0)
    else:
        assert test.condition is None
    # the appended poisoned copies carry the training (partial) trigger, the test split the whole one
    n = len(train.base)
    first = int(train.order[0])
    row = int(train.base.indices[first])
    clean = train.base[first]["image"]
    seed = tiny10().attack_seed
    np.testing.assert_array_equal(train[n]["image"],
                                  train.trigger.poison_transform(clean, image_rng(seed, TRAIN_STREAM, row)))


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
    from medbackdoor.study.report import build_report

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
