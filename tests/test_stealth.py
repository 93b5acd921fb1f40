import json
import math

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from medbackdoor.cli import main
from medbackdoor.metrics import image_psnr, image_ssim, stealth
from medbackdoor.triggers import TRIGGERS, SquareTrigger


def images(n=10, size=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size), dtype=np.uint8)


def test_identical_images():
    x = images(4)
    s = stealth(x, x.copy())
    assert s["images"] == 4 and s["psnr"] == math.inf and s["ssim"] == 1.0
    assert s["changed_pixels"] == 0.0 and s["changed_images"] == 0.0


def test_single_changed_pixel_psnr_by_hand():
    x = np.full((1, 32, 32), 100, np.uint8)
    y = x.copy()
    y[0, 5, 7] = 140  # one pixel off by 40
    mse = 40.0**2 / (32 * 32)
    s = stealth(x, y)
    assert s["psnr"] == pytest.approx(10 * math.log10(255.0**2 / mse))
    assert s["changed_pixels"] == pytest.approx(1 / (32 * 32)) and s["changed_images"] == 1.0
    assert s["ssim"] == pytest.approx(structural_similarity(x[0], y[0], data_range=255))


def test_psnr_averages_changed_images_only_and_ssim_matches_skimage():
    x = images(3)
    y = x.copy()
    y[0, :4, :4] = 0
    y[2, 10:20, 10:20] = 255
    s = stealth(x, y)
    assert s["psnr"] == pytest.approx((image_psnr(x[0], y[0]) + image_psnr(x[2], y[2])) / 2)
    want = [structural_similarity(a, b, data_range=255) for a, b in zip(x, y)]
    assert s["ssim"] == pytest.approx(np.mean(want))
    assert s["changed_images"] == pytest.approx(2 / 3)
    assert s["changed_pixels"] == pytest.approx(int((x != y).sum()) / x.size)


def test_chunked_equals_unchunked():
    x = images(10)
    y = np.stack([SquareTrigger(size=5, location="random")(img, np.random.default_rng(i)) for i, img in enumerate(x)])
    y[4] = x[4]  # one identical pair
    assert stealth(x, y, chunk=3) == pytest.approx(stealth(x, y, chunk=256))


class LazyView:
    """Images read only through ``view[lo:hi]`` (no array conversion of the whole thing)."""

    def __init__(self, array):
        self.array, self.reads = array, []

    def __len__(self):
        return len(self.array)

    def __getitem__(self, sel):
        assert isinstance(sel, slice)
        self.reads.append((sel.start, sel.stop))
        return self.array[sel].copy()


def test_lazy_view():
    x, y = images(7, seed=1), images(7, seed=2)
    cv, tv = LazyView(x), LazyView(y)
    assert stealth(cv, tv, chunk=3) == pytest.approx(stealth(x, y))
    assert len(cv.reads) == 3 and all(hi - lo <= 3 for lo, hi in cv.reads)


def test_small_images_and_bad_input():
    x = images(2, size=5)
    y = x.copy()
    y[:, 2, 2] ^= 0xFF
    assert image_ssim(x[0], y[0]) == pytest.approx(structural_similarity(x[0], y[0], data_range=255, win_size=5))
    assert math.isnan(image_ssim(x[0, 1:3, 1:3], y[0, 1:3, 1:3])) and image_ssim(x[0, :2], x[0, :2]) == 1.0
    assert stealth(np.empty((0, 8, 8), np.uint8), np.empty((0, 8, 8), np.uint8))["images"] == 0
    with pytest.raises(ValueError, match="triggered images"):
        stealth(x, y[:1])


def test_poison_preview_reports_every_trigger(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MEDBACKDOOR_CACHE", str(tmp_path / "cache"))
    # a registered trigger that cannot be placed on a 32×32 image is skipped with a note
    monkeypatch.setitem(TRIGGERS._items, "zz-too-big", lambda: SquareTrigger(size=64))
    sets = ["dataset.options.n_images=60", "dataset.options.source_size=32", "image_size=32", "trigger.size=5"]
    code = main(["poison", "preview", *sum((["--set", s] for s in sets), []), "--out", str(tmp_path / "prev")])
    out, _ = capsys.readouterr()
    assert code == 0
    assert (tmp_path / "prev" / "triggers.png").stat().st_size > 0
    summary = json.loads((tmp_path / "prev" / "poison_summary.json").read_text())
    configured, per = summary["stealth"]["configured"], summary["stealth"]["triggers"]
    assert set(per) == set(TRIGGERS.names())
    assert "larger than" in per["zz-too-big"]["skipped"]
    assert configured["images"] == summary["test"] and configured["changed_images"] == 1.0
    assert configured["trigger"] == per["square"]["trigger"] and "size=5" in configured["trigger"]
    assert per["square"]["images"] == min(64, summary["test"])
    assert configured["changed_pixels"] == pytest.approx(25 / 32**2)
    for name, entry in per.items():
        assert "skipped" in entry or {"psnr", "ssim", "changed_pixels", "changed_images"} <= set(entry)
        assert any(line.strip().startswith(name) for line in out.splitlines())
