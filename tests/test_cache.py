import numpy as np

from medbackdoor.data import NIHChestXray14, Preprocess, create_dataset
from medbackdoor.data.cache import cache_path, load_images
from medbackdoor.data.preprocess import preprocess


def test_cache_matches_direct_preprocessing_and_is_reused(nih_root, cache_dir):
    ds = NIHChestXray14(nih_root)
    prep = Preprocess(crop=0.6, resize="nearest")
    images = load_images(ds, 32, prep, cache_dir, workers=2, progress=False)
    assert images.shape == (len(ds), 32, 32) and images.dtype == np.uint8
    for i in (0, 3, len(ds) - 1):
        np.testing.assert_array_equal(images[i], preprocess(ds.read_source(i), 32, prep))
    path = cache_path(ds, 32, prep, cache_dir)
    mtime = path.stat().st_mtime_ns
    again = load_images(NIHChestXray14(nih_root), 32, prep, cache_dir, progress=False)
    assert path.stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(again, images)
    assert not [p for p in cache_dir.iterdir() if p.name.endswith(".tmp")]


def test_cache_invalidated_by_source_or_preprocessing(nih_root, cache_dir):
    ds = NIHChestXray14(nih_root)
    prep = Preprocess()
    first = cache_path(ds, 32, prep, cache_dir)
    load_images(ds, 32, prep, cache_dir, workers=0, progress=False)
    assert cache_path(ds, 32, Preprocess(resize="bilinear"), cache_dir) != first
    assert cache_path(ds, 48, prep, cache_dir) != first
    # rewrite one image: the key changes and the new cache holds the new pixels
    target = ds.path(0)
    from PIL import Image
    Image.fromarray(np.zeros((48, 48), np.uint8)).save(target)
    ds2 = NIHChestXray14(nih_root)
    assert cache_path(ds2, 32, prep, cache_dir) != first
    assert load_images(ds2, 32, prep, cache_dir, workers=0, progress=False)[0].max() == 0


def test_synthetic_cache_shared_across_instances(cache_dir):
    a = load_images(create_dataset("synthetic", n_images=20, source_size=64), 32, None, cache_dir, 0, False)
    b = load_images(create_dataset("synthetic", n_images=20, source_size=64), 32, None, cache_dir, 0, False)
    np.testing.assert_array_equal(a, b)
    assert len(list(cache_dir.glob("*.npy"))) == 1
