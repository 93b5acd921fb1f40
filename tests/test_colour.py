"""Colour (RGB) images through every path: decoding, crop and resize, the cache, triggers, stealth, models and the
inpainting repair. A colour image is 3×H×W uint8 (channel first); gray stays H×W. Expected values are written out
here by hand (slices, block means, per-channel formulas) or come from scikit-image applied channel by channel."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import structural_similarity

from medbackdoor.data.base import ChestXrayDataset
from medbackdoor.data.cache import load_images
from medbackdoor.data.preprocess import Preprocess, preprocess, read_image8
from medbackdoor.errors import UserError
from medbackdoor.metrics.stealth import image_ssim, stealth
from medbackdoor.triggers import TRIGGERS
from medbackdoor.triggers.base import image_rng


def _rgb(h=8, w=8, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (3, h, w), dtype=np.uint8)


def test_an_rgb_file_decodes_channel_first_and_gray_files_are_replicated(tmp_path):
    rgb = _rgb(6, 5)
    Image.fromarray(rgb.transpose(1, 2, 0), "RGB").save(tmp_path / "c.png")
    gray = rgb[0]
    Image.fromarray(gray, "L").save(tmp_path / "g.png")
    assert np.array_equal(read_image8(tmp_path / "c.png", channels=3), rgb)
    assert np.array_equal(read_image8(tmp_path / "g.png", channels=3), np.stack([gray] * 3))
    assert read_image8(tmp_path / "g.png").shape == (6, 5)  # gray data stays H×W


def test_crop_and_resize_keep_the_channels_first():
    x = _rgb(8, 8)
    assert np.array_equal(preprocess(x, 4, Preprocess(crop=0.5)), x[:, 2:6, 2:6])  # crop only: already 4 px
    # nearest from 8 to 4 px samples the pixel under each output centre: rows and columns 1, 3, 5, 7
    assert np.array_equal(preprocess(x, 4, Preprocess(resize="nearest")), x[:, 1::2, 1::2])
    # area (box) from 8 to 4 px: each output pixel is the mean of a 2×2 block, in each channel
    blocks = x.astype(np.float64).reshape(3, 4, 2, 4, 2).mean((2, 4))
    assert np.abs(preprocess(x, 4, Preprocess(resize="area")).astype(int) - blocks).max() <= 1
    with pytest.raises(UserError, match="3×H×W"):
        preprocess(np.zeros((4, 8, 8), np.uint8), 4, Preprocess())


class _Colour(ChestXrayDataset):
    name = "colour-test"
    label_names = ("a", "b")
    task_kind = "multiclass"
    channels = 3

    def __init__(self, n=6, size=12):
        self.size = size
        labels = np.eye(2, dtype=np.float32)[np.arange(n) % 2]
        splits = np.array(["train", "val", "test"])[np.arange(n) % 3]
        names = [f"img{i}" for i in range(n)]
        self._set_table(names, labels, names, splits)

    def read_source(self, index):
        return _rgb(self.size, self.size, seed=index)

    def source_fingerprint(self):
        return {"dataset": self.name, "n": len(self.names), "size": self.size}


def test_the_cache_holds_colour_images_as_n_by_3_by_s_by_s(tmp_path):
    data = _Colour()
    images = load_images(data, 6, Preprocess(resize="nearest"), cache_dir=tmp_path, workers=0, progress=False)
    assert images.shape == (6, 3, 6, 6) and images.dtype == np.uint8
    assert np.array_equal(images[4], _rgb(12, 12, seed=4)[:, 1::2, 1::2])


def test_a_dataset_whose_images_do_not_match_its_channels_is_one_line(tmp_path):
    class Wrong(_Colour):
        def read_source(self, index):
            return _rgb(12, 12, seed=index)[0]  # gray, though it declares 3 channels

    with pytest.raises(UserError, match="expected"):
        load_images(Wrong(), 6, cache_dir=tmp_path, workers=0, progress=False)


def test_a_gray_trigger_stamps_every_channel_alike():
    x = _rgb(16, 16)
    for kind in ("square", "patch", "blend", "sig", "warp", "frequency"):
        trigger = TRIGGERS.create(kind)
        out = trigger(x, image_rng(0, 0, 1))
        assert out.shape == x.shape and out.dtype == np.uint8
        for c in range(3):  # each channel is what the trigger makes of that channel as a gray image
            assert np.array_equal(out[c], trigger(x[c], image_rng(0, 0, 1))), (kind, c)


def test_colour_triggers_stamp_their_rgb_pattern():
    x = _rgb(9, 9)
    red = TRIGGERS.create("square", size=3, value=[1.0, 0.0, 0.0])(x, image_rng(0, 0, 0))
    assert red[:, 3:6, 3:6].tolist() == [[[255] * 3] * 3, [[0] * 3] * 3, [[0] * 3] * 3]
    outside = np.ones((9, 9), bool)
    outside[3:6, 3:6] = False
    assert np.array_equal(red[:, outside], x[:, outside])

    blend = TRIGGERS.create("blend", alpha=0.2, seed=5, channels=3)(x, image_rng(0, 0, 0))
    r = np.random.default_rng(5).random((3, 9, 9), np.float32).astype(np.float64) * 255.0
    assert np.abs(blend.astype(float) - (0.8 * x + 0.2 * r)).max() <= 0.5 + 1e-9

    patch = TRIGGERS.create("patch", size=3, pattern="noise", seed=2, channels=3)(x, image_rng(0, 0, 0))
    bits = np.random.default_rng(2).integers(0, 2, (3, 3, 3))
    assert np.array_equal(patch[:, 5:8, 5:8], bits * 255)  # bottom-right corner, 1 px from the edges


def test_a_colour_pattern_on_gray_images_is_refused():
    with pytest.raises(UserError, match="colour pattern"):
        TRIGGERS.create("blend", channels=3)(np.zeros((8, 8), np.uint8), image_rng(0, 0, 0))
    with pytest.raises(UserError, match="channels"):
        TRIGGERS.create("patch", channels=2)


def test_stealth_of_colour_images_averages_ssim_over_channels_and_counts_a_pixel_once():
    a = _rgb(16, 16, seed=1)
    b = a.copy()
    b[0, 2, 3] ^= 0xFF
    b[1, 2, 3] ^= 0x0F  # the same pixel in two channels: one changed pixel
    b[2, 9, 9] ^= 0xF0
    expected = np.mean([structural_similarity(a[c], b[c], data_range=255, win_size=7) for c in range(3)])
    assert image_ssim(a, b) == pytest.approx(expected, rel=1e-9)
    out = stealth(a[None], b[None])
    assert out["changed_pixels"] == pytest.approx(2 / 256) and out["changed_images"] == 1.0


def test_the_models_take_rgb_and_an_xrv_style_gray_network_refuses_it():
    from medbackdoor.models import check_input_channels, create_model

    model = create_model("densenet121", "none", 5, image_size=32).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 5)
        assert model(torch.rand(2, 1, 32, 32)).shape == (2, 5)
    check_input_channels(model, 3)
    gray_net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten())
    with pytest.raises(UserError, match="gray"):
        check_input_channels(gray_net, 3, "xrv")


def test_februus_inpaints_a_colour_region_in_every_channel_and_leaves_the_rest():
    from medbackdoor.defenses.februus import inpaint

    x = np.stack([np.full((10, 10), v, np.uint8) for v in (40, 120, 200)])
    x[:, 4:6, 4:6] = 255  # a bright blot on flat channels: inpainting must restore each channel's value
    region = np.zeros((10, 10), bool)
    region[4:6, 4:6] = True
    out = inpaint(x, region, "biharmonic")
    assert out.shape == x.shape and np.array_equal(out[:, ~region], x[:, ~region])
    assert [int(v) for v in out[:, 4, 4]] == [40, 120, 200]


def test_an_rgb_square_is_configured_like_any_trigger_value():
    from medbackdoor.config import load_config
    from medbackdoor.experiment import build_trigger

    trigger, _ = build_trigger(load_config("quick-real", ["trigger.value=[0, 1, 0]"]), ("Atelectasis", "b"))
    out = trigger(_rgb(9, 9), image_rng(0, 0, 0))
    assert out[:, 4, 4].tolist() == [0, 255, 0]
    with pytest.raises(UserError, match="three such values"):
        build_trigger(load_config("quick-real", ["trigger.value=[0, 1]"]), ("Atelectasis", "b"))


def test_the_trigger_box_of_a_colour_image_is_spatial():
    from medbackdoor.explain.localise import trigger_boxes

    clean = np.stack([_rgb(12, 12, seed=3)])
    triggered = clean.copy()
    triggered[0, 2, 4:7, 5:9] = 255 - triggered[0, 2, 4:7, 5:9]  # rows 4-6, columns 5-8, blue channel only
    assert trigger_boxes(clean, triggered).tolist() == [[4, 5, 7, 9]]


def test_no_rows_to_trigger_gives_no_images_in_either_layout():
    from medbackdoor.poison.stage import triggered_images

    for shape in ((0, 8, 8), (0, 3, 8, 8)):
        images, survived = triggered_images(None, np.zeros(0, np.int64), np.zeros(shape, np.uint8),
                                            TRIGGERS.create("square"), "input", 0, 1)
        assert images.shape == shape and survived.shape == (0,)
