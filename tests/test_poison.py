import numpy as np
import pytest

from medbackdoor.data import create_dataset
from medbackdoor.data.cache import load_images
from medbackdoor.data.preprocess import Preprocess
from medbackdoor.errors import UserError
from medbackdoor.labels import LABELS
from medbackdoor.poison import TRAIN_STREAM, ImageSplit, PoisonedDataset, choose_poisoned, triggered_images
from medbackdoor.triggers import SquareTrigger


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
    ds = PoisonedDataset(base, SquareTrigger(3), fraction=0.4, target="Atelectasis", mode="replace", seed=1)
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
    ds = PoisonedDataset(base, SquareTrigger(3), fraction=0.4, target="Effusion", mode="append", seed=1)
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
    a = PoisonedDataset(base, SquareTrigger(2, location="random"), 0.3, seed=7)
    b = PoisonedDataset(base, SquareTrigger(2, location="random"), 0.3, seed=7)
    assert a.poisoned == b.poisoned
    for i in sorted(a.poisoned):
        np.testing.assert_array_equal(a[i]["image"], b[i]["image"])
    c = PoisonedDataset(base, SquareTrigger(2, location="random"), 0.3, seed=8)
    assert c.poisoned != a.poisoned


def test_unknown_target_and_mode():
    with pytest.raises(UserError, match="valid names"):
        PoisonedDataset(_split(), SquareTrigger(3), target="Covid")
    with pytest.raises(UserError, match="mode"):
        PoisonedDataset(_split(), SquareTrigger(3), mode="swap")


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
