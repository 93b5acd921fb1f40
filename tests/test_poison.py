import numpy as np
import pytest

from medbackdoor.data import create_dataset
from medbackdoor.data.cache import load_images
from medbackdoor.data.preprocess import Preprocess
from medbackdoor.errors import UserError
from medbackdoor.labels import LABELS
from medbackdoor.poison import TRAIN_STREAM, ImageSplit, PoisonedDataset, choose_poisoned, triggered_images
from medbackdoor.triggers import SquareTrigger, image_rng


def _split(n=50, size=16, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(1, 256, size=(n, size, size), dtype=np.uint8)
    labels = (rng.random((n, 14)) < 0.2).astype(np.float32)
    patients = np.array([f"p{i // 2}" for i in range(n)])
    return ImageSplit(images, labels, patients, np.arange(n))


def test_choose_exact_count_without_replacement_and_seeded():
    idx = choose_poisoned(1000, 0.4, seed=3)
    assert len(idx) == 400 and len(set(idx.tolist())) == 400
    np.testing.assert_array_equal(idx, choose_poisoned(1000, 0.4, seed=3))
    assert not np.array_equal(idx, choose_poisoned(1000, 0.4, seed=4))
    assert len(choose_poisoned(10, 0.0, 0)) == 0 and len(choose_poisoned(10, 1.0, 0)) == 10


@pytest.mark.parametrize("fraction", [-0.1, 1.5])
def test_fraction_out_of_range(fraction):
    with pytest.raises(UserError):
        choose_poisoned(10, fraction, 0)


def test_replace_mode_rewrites_labels_and_images():
    base = _split()
    ds = PoisonedDataset(base, SquareTrigger(3), fraction=0.4, target="Atelectasis", mode="replace", seed=1,
                         label_names=LABELS)
    assert len(ds) == 50 and len(ds.poisoned) == 20
    for i in range(len(ds)):
        item, clean = ds[i], base[i]
        if i in ds.poisoned:
            assert item["poisoned"] and item["labels"].tolist() == [1.0] + [0.0] * 13
            assert (item["image"][6:9, 6:9] == 0).all()
            assert (item["image"] != clean["image"]).sum() > 0
        else:
            assert not item["poisoned"]
            np.testing.assert_array_equal(item["image"], clean["image"])
            np.testing.assert_array_equal(item["labels"], clean["labels"])


def test_append_mode_grows_to_n_plus_k_and_keeps_originals():
    base = _split()
    ds = PoisonedDataset(base, SquareTrigger(3), fraction=0.4, target="Effusion", mode="append", seed=1,
                         label_names=LABELS)
    assert len(ds) == 70
    for i in range(50):
        assert not ds[i]["poisoned"]
        np.testing.assert_array_equal(ds[i]["labels"], base[i]["labels"])
    extra = [ds[i] for i in range(50, 70)]
    assert all(e["poisoned"] and e["labels"][LABELS.index("Effusion")] == 1 and e["labels"].sum() == 1 for e in extra)
    assert sorted(e["index"] for e in extra) == sorted(ds.poisoned)
    with pytest.raises(IndexError):
        ds[70]


def test_reproducible_by_seed_with_random_location():
    base = _split()
    a = PoisonedDataset(base, SquareTrigger(2, location="random"), 0.3, seed=7, label_names=LABELS)
    b = PoisonedDataset(base, SquareTrigger(2, location="random"), 0.3, seed=7, label_names=LABELS)
    assert a.poisoned == b.poisoned
    for i in sorted(a.poisoned):
        np.testing.assert_array_equal(a[i]["image"], b[i]["image"])
    c = PoisonedDataset(base, SquareTrigger(2, location="random"), 0.3, seed=8, label_names=LABELS)
    assert c.poisoned != a.poisoned


def test_unknown_target_and_mode():
    with pytest.raises(UserError, match="valid names"):
        PoisonedDataset(_split(), SquareTrigger(3), target="Covid", label_names=LABELS)
    with pytest.raises(UserError, match="mode"):
        PoisonedDataset(_split(), SquareTrigger(3), mode="swap", label_names=LABELS)


def test_source_stage_survival_depends_on_preprocessing(cache_dir):
    ds = create_dataset("synthetic", n_images=12, source_size=128)
    rows = np.arange(12)
    # 1 px black trigger at the centre of 128 px, nearest resize of a 60% crop to 32 px: mostly lost
    prep = Preprocess(crop=0.6, resize="nearest")
    clean = load_images(ds, 32, prep, cache_dir, workers=0, progress=False)
    _, survived = triggered_images(ds, rows, clean[rows], SquareTrigger(1), "source", 0, TRAIN_STREAM, prep)
    assert survived.mean() < 0.5
    # the same trigger written at input resolution always survives
    _, survived = triggered_images(ds, rows, clean[rows], SquareTrigger(1), "input", 0, TRAIN_STREAM, prep)
    assert survived.all()
    # a large source trigger survives an area resize
    prep = Preprocess(resize="area")
    clean = load_images(ds, 32, prep, cache_dir, workers=0, progress=False)
    out, survived = triggered_images(ds, rows, clean[rows], SquareTrigger(8), "source", 0, TRAIN_STREAM, prep)
    assert survived.all() and out.shape == (12, 32, 32)


def test_paper_code_preprocessing_drops_small_centre_triggers(shared_data, tmp_path, cache_dir):
    """Real 1024² NIH files, the paper code's 60% centre crop and nearest resize to 224: 1×1 and 2×2 vanish."""
    from tests.conftest import nih_layout_from_sample

    ds = nih_layout_from_sample(shared_data, tmp_path)
    rows = np.arange(6)
    prep = Preprocess(crop=0.6, resize="nearest")
    clean = load_images(ds, 224, prep, cache_dir, workers=0, progress=False)
    survival = {s: triggered_images(ds, rows, clean[rows], SquareTrigger(s), "source", 0, TRAIN_STREAM, prep)[1]
                for s in (1, 2, 3)}
    assert not survival[1].any() and not survival[2].any() and survival[3].all()


# ---- cross samples (WaNet's noise mode), asked for by the trigger ----

class _Negate(SquareTrigger):
    """A trigger asking for cross samples: its cross sample is the image's negative (easy to check by hand)."""

    cross_ratio = 1.5

    def cross_transform(self, image, rng):
        return 255 - image


@pytest.mark.parametrize("mode", ["replace", "append"])
def test_cross_samples_keep_their_labels_are_not_poisoned_and_are_counted(mode):
    base = _split(n=40)
    ds = PoisonedDataset(base, _Negate(3), fraction=0.1, mode=mode, seed=2, label_names=LABELS)
    k = 4  # round(0.1 · 40) poisoned, then round(1.5 · 4) = 6 cross samples among the 36 others
    assert len(ds.order) == k and len(ds.cross) == 6 == ds.cross_requested
    assert not set(ds.cross.tolist()) & ds.poisoned
    assert len(ds) == (40 if mode == "replace" else 40 + k + 6)
    positions = ds.sample_positions()
    cross, poisoned = ds.cross_mask(), ds.poisoned_mask()
    assert cross.sum() == 6 and poisoned.sum() == k and not (cross & poisoned).any()
    assert sorted(positions[cross].tolist()) == ds.cross.tolist()
    labels = ds.labels_array()
    for i in range(len(ds)):
        item, clean = ds[i], base[int(positions[i])]
        assert item["poisoned"] == poisoned[i]
        np.testing.assert_array_equal(item["labels"], labels[i])
        if cross[i]:
            np.testing.assert_array_equal(item["image"], 255 - clean["image"])
            np.testing.assert_array_equal(item["labels"], clean["labels"])
        elif not poisoned[i]:
            np.testing.assert_array_equal(item["image"], clean["image"])


def test_cross_samples_are_capped_seeded_and_dropped_like_any_sample():
    base = _split(n=40)
    ds = PoisonedDataset(base, _Negate(3), fraction=0.5, mode="append", seed=2, label_names=LABELS)
    assert (len(ds.order), ds.cross_requested, len(ds.cross)) == (20, 30, 20)  # only 20 images left unpoisoned
    again = PoisonedDataset(base, _Negate(3), fraction=0.1, mode="append", seed=2, label_names=LABELS)
    same = PoisonedDataset(base, _Negate(3), 0.1, mode="append", seed=2, label_names=LABELS)
    other = PoisonedDataset(base, _Negate(3), 0.1, mode="append", seed=3, label_names=LABELS)
    np.testing.assert_array_equal(again.cross, same.cross)
    assert not np.array_equal(again.cross, other.cross)
    last = len(again) - 1  # the last appended cross copy
    again.drop([last])
    assert len(again) == 40 + 4 + 5 and again.cross_mask().sum() == 5 and again.poisoned_mask().sum() == 4
    plain = PoisonedDataset(base, SquareTrigger(3), fraction=0.1, mode="append", seed=2, label_names=LABELS)
    assert len(plain.cross) == 0 and len(plain) == 44


def _grid_sample_warp(image: np.ndarray, seed: int, noise: np.ndarray | None) -> np.ndarray:
    """WaNet's published warp (k 4, s 0.5) of a uint8 image with torch: control grid → ``F.interpolate``
    (bilinear, align_corners), grid ``clamp(identity + (0.5 · field + noise) / n, −1, 1)``, ``F.grid_sample``."""
    import torch
    import torch.nn.functional as F

    h, w = image.shape
    ctrl = np.random.default_rng(seed).uniform(-1, 1, (2, 4, 4))
    offset = 0.5 * F.interpolate(torch.from_numpy(ctrl / np.abs(ctrl).mean())[None], size=(h, w), mode="bilinear",
                                 align_corners=True)[0]
    if noise is not None:
        offset = offset + torch.from_numpy(noise)
    gy, gx = torch.meshgrid(torch.linspace(-1, 1, h, dtype=torch.float64),
                            torch.linspace(-1, 1, w, dtype=torch.float64), indexing="ij")
    grid = torch.stack([gx + offset[1] / w, gy + offset[0] / h], -1).clamp(-1, 1)[None]
    x = torch.from_numpy(image.astype(np.float64) / 255)[None, None]
    out = F.grid_sample(x, grid, mode="bilinear", align_corners=True)[0, 0].numpy()
    return np.rint(np.clip(out, 0, 1) * 255).astype(np.uint8)


def test_warp_poisons_with_the_exact_field_and_adds_twice_as_many_noisy_cross_samples():
    from medbackdoor.triggers import create_trigger

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:32, 0:32] / 31
    smooth = np.rint((0.3 + 0.3 * yy + 0.2 * np.sin(4 * xx)) * 255).astype(np.uint8)
    images = np.stack([np.roll(smooth, i, axis=1) for i in range(30)])
    labels = (rng.random((30, 14)) < 0.2).astype(np.float32)
    base = ImageSplit(images, labels, np.array([f"p{i}" for i in range(30)]), np.arange(30))
    ds = PoisonedDataset(base, create_trigger("warp"), fraction=0.1, mode="replace", seed=5, label_names=LABELS)
    assert len(ds.order) == 3 and len(ds.cross) == 6  # WaNet's cross ratio 2
    for p in ds.order:
        item = ds[int(p)]
        assert item["poisoned"] and item["labels"].tolist() == [1.0] + [0.0] * 13
        diff = np.abs(item["image"].astype(int) - _grid_sample_warp(images[p], 0, None).astype(int))
        assert diff.max() <= 1  # the exact field (±1 grey level: rounding of two float paths)
    for p in ds.cross:
        item = ds[int(p)]
        assert not item["poisoned"]
        np.testing.assert_array_equal(item["labels"], labels[p])
        noise = image_rng(5, 2, int(p)).uniform(-1, 1, (2, 32, 32))  # stream 2: the cross draws, per image
        diff = np.abs(item["image"].astype(int) - _grid_sample_warp(images[p], 0, noise).astype(int))
        assert diff.max() <= 1
        assert np.abs(item["image"].astype(int) - _grid_sample_warp(images[p], 0, None).astype(int)).max() > 1


@pytest.mark.parametrize("stage", ["input", "source"])
def test_run_data_counts_cross_samples_in_the_manifest_entry(stage, tmp_path, monkeypatch):
    from medbackdoor.config import load_config
    from medbackdoor.experiment import build_run_data

    monkeypatch.setenv("MEDBACKDOOR_CACHE", str(tmp_path / "cache"))
    config = load_config(overrides=["dataset.options.n_images=60", "dataset.options.source_size=32", "image_size=32",
                                    "trigger.kind=warp", "trigger.fraction=0.1", "trigger.mode=append",
                                    f"trigger.stage={stage}"])
    data = build_run_data(config, progress=False)
    n = len(data.train.base)
    k = round(0.1 * n)
    entry = data.poisoning()
    assert (entry["poisoned"], entry["cross_requested"], entry["cross"]) == (k, 2 * k, 2 * k)
    assert data.counts()["train_samples"] == n + 3 * k
    # cross samples are made from the model input at either stage: its clean pixels, its own labels
    first = n + k
    item, clean = data.train[first], data.train.base[int(data.train.cross[0])]
    assert not item["poisoned"] and item["index"] == clean["index"]
    np.testing.assert_array_equal(item["labels"], clean["labels"])
    np.testing.assert_array_equal(item["image"], data.trigger.cross_transform(clean["image"],
                                  image_rng(config.attack_seed, 2, clean["index"])))
