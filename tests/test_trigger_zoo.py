import inspect
import pickle

import numpy as np
import pytest
from PIL import Image

from medbackdoor.errors import UserError
from medbackdoor.triggers import create_trigger, image_rng
from medbackdoor.triggers.blend import BlendTrigger
from medbackdoor.triggers.frequency import FrequencyTrigger
from medbackdoor.triggers.patch import PatchTrigger
from medbackdoor.triggers.sig import SigTrigger
from medbackdoor.triggers.warp import WarpTrigger


def _gradient(size: int, dtype=np.uint8) -> np.ndarray:
    """A smooth test image in the mid range (so additive triggers do not clip)."""
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    x = 0.35 + 0.2 * yy + 0.1 * np.sin(3 * xx)
    return np.rint(x * 255).astype(np.uint8) if dtype == np.uint8 else x.astype(dtype)


# ---- conformance: every registered trigger, built with its defaults ----

@pytest.mark.registry("trigger", "kind")
@pytest.mark.parametrize("size", [32, 200])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64])
def test_conformance(kind, size, dtype):
    trig = create_trigger(kind)
    img = _gradient(size, dtype)
    before = img.copy()
    out = trig(img, image_rng(0, 0, 7))
    assert out.shape == img.shape and out.dtype == img.dtype
    if dtype != np.uint8:
        assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0
    np.testing.assert_array_equal(img, before)  # input never mutated
    np.testing.assert_array_equal(out, trig(img, image_rng(0, 0, 7)))  # same draw, same output
    other = create_trigger(kind)  # a fresh instance (another process) agrees
    np.testing.assert_array_equal(out, other(img, image_rng(0, 0, 7)))
    np.testing.assert_array_equal(out, pickle.loads(pickle.dumps(trig))(img, image_rng(0, 0, 7)))


@pytest.mark.registry("trigger", "kind")
def test_changes_a_mid_gray_image(kind):
    trig = create_trigger(kind)
    img = np.rint(128 + 40 * np.sin(np.add.outer(np.arange(32), 2 * np.arange(32)) / 3)).astype(np.uint8)
    out = trig(img, image_rng(0, 0, 1))  # mid-gray with texture (a warp cannot change a constant image)
    assert (out != img).any() == getattr(trig, "changes_pixels", True)


@pytest.mark.registry("trigger", "kind")
def test_repr_names_every_parameter(kind):
    trig = create_trigger(kind)
    text = repr(trig)
    for name in inspect.signature(type(trig)).parameters:
        assert f"{name}=" in text, (kind, name, text)
    assert "\n" not in text and len(text) < 300


def test_repr_differs_with_options():
    assert repr(PatchTrigger(pattern="noise")) != repr(PatchTrigger())
    assert repr(WarpTrigger(seed=1)) != repr(WarpTrigger())
    assert repr(BlendTrigger(alpha=0.2)) != repr(BlendTrigger())


# ---- exact pixels ----

def test_patch_checkerboard_corner_exact():
    img = np.full((8, 8), 100, np.uint8)
    out = PatchTrigger(size=3)(img, image_rng(0, 0, 0))
    expected = img.copy()
    expected[4:7, 4:7] = [[255, 0, 255], [0, 255, 0], [255, 0, 255]]
    np.testing.assert_array_equal(out, expected)


def test_patch_center_noise_and_random():
    trig = PatchTrigger(size=4, pattern="noise", location="center", seed=3)
    img = np.full((10, 10), 0.5, np.float32)
    out = trig(img, image_rng(0, 0, 0))
    np.testing.assert_array_equal(out[3:7, 3:7], trig.patch())
    assert set(np.unique(trig.patch())) <= {0.0, 1.0}
    assert (np.delete(out.ravel(), np.ravel_multi_index(np.mgrid[3:7, 3:7].reshape(2, -1), (10, 10))) == 0.5).all()
    rand = PatchTrigger(size=2, location="random")
    boxes = {rand.box(9, 9, image_rng(0, 0, i)) for i in range(50)}
    assert len(boxes) > 1 and all(0 <= t and b <= 9 and 0 <= c and r <= 9 for t, c, b, r in boxes)


def test_patch_too_large():
    with pytest.raises(UserError, match="larger than"):
        PatchTrigger(size=8)(np.zeros((8, 8), np.uint8), image_rng(0, 0, 0))
    PatchTrigger(size=8, location="center")(np.zeros((8, 8), np.uint8), image_rng(0, 0, 0))


def test_blend_by_hand():
    x = _gradient(40, np.float64)
    trig = BlendTrigger(alpha=0.2, seed=5)
    r = np.random.default_rng(5).random((40, 40), np.float32)
    np.testing.assert_allclose(trig(x, image_rng(0, 0, 0)), 0.8 * x + 0.2 * r, atol=1e-6)
    x8 = _gradient(40)
    np.testing.assert_allclose(trig(x8, image_rng(0, 0, 0)).astype(float), 0.8 * x8 + 0.2 * 255 * r, atol=0.51)


def test_blend_image_file(tmp_path):
    path = tmp_path / "t.png"
    Image.fromarray(np.tile(np.arange(0, 256, 16, dtype=np.uint8), (16, 1))).convert("RGB").save(path)
    trig = BlendTrigger(alpha=1.0, image=str(path))
    out = trig(np.zeros((16, 16), np.uint8), image_rng(0, 0, 0))
    np.testing.assert_array_equal(out[0], np.arange(0, 256, 16))
    assert trig(np.zeros((48, 40), np.uint8), image_rng(0, 0, 0)).shape == (48, 40)
    for bad in (tmp_path / "missing.png", tmp_path / "t.txt"):
        bad.parent.mkdir(exist_ok=True)
        if bad.suffix == ".txt":
            bad.write_text("not an image")
        with pytest.raises(UserError, match=bad.name):
            create_trigger("blend", image=str(bad))
        with pytest.raises(UserError, match=bad.name):
            create_trigger("frequency", image=str(bad))


def test_sig_by_hand():
    x = _gradient(50, np.float64)
    trig = SigTrigger(delta=0.1, frequency=3)
    expected = np.clip(x + 0.1 * np.sin(2 * np.pi * np.arange(50) * 3 / 50)[None, :], 0, 1)
    np.testing.assert_allclose(trig(x, image_rng(0, 0, 0)), expected, atol=1e-12)
    x8 = np.full((4, 50), 250, np.uint8)  # clipped at 255
    wave = 0.1 * np.sin(2 * np.pi * np.arange(50) * 3 / 50)
    np.testing.assert_array_equal(trig(x8, image_rng(0, 0, 0))[0], np.rint(np.clip(250 / 255 + wave, 0, 1) * 255))


def test_frequency_alpha_zero_is_identity():
    x = _gradient(64, np.float64)
    np.testing.assert_allclose(FrequencyTrigger(alpha=0.0)(x, image_rng(0, 0, 0)), x, atol=1e-6)
    x8 = _gradient(64)
    np.testing.assert_array_equal(FrequencyTrigger(alpha=0.0)(x8, image_rng(0, 0, 0)), x8)


@pytest.mark.parametrize("shape", [(64, 64), (48, 60), (33, 41)])
def test_frequency_amplitude_blend(shape):
    h, w = shape
    x = _gradient(max(shape), np.float64)[:h, :w]
    trig = FrequencyTrigger(alpha=0.3, beta=0.2, seed=2)
    out = trig(x, image_rng(0, 0, 0))
    assert 0 < out.min() and out.max() < 1  # no clipping: the relation holds exactly

    def spec(a):
        return np.fft.fftshift(np.fft.fft2(a))

    fx, fo, fr = spec(x), spec(out), spec(trig.trigger_image(h, w))
    rows, cols = trig.band(h, w)
    band = np.zeros(shape, bool)
    band[rows, cols] = True
    side = 2 * int(0.2 * min(shape) / 2) + 1
    assert band.sum() == side * side
    np.testing.assert_allclose(np.abs(fo[band]), 0.7 * np.abs(fx[band]) + 0.3 * np.abs(fr[band]), atol=1e-8)
    np.testing.assert_allclose(fo[~band], fx[~band], atol=1e-8)  # outside the band: unchanged
    keep = np.abs(fx) > 1e-6
    dphase = np.angle(fo[keep] * np.conj(fx[keep]))
    np.testing.assert_allclose(dphase, 0, atol=1e-6)  # the input's phase is kept


def test_warp_zero_strength_is_identity_and_field_is_fixed():
    for x in (_gradient(40), _gradient(40, np.float32)):
        np.testing.assert_array_equal(WarpTrigger(s=0.0)(x, image_rng(0, 0, 0)), x)
    a, b = WarpTrigger(seed=4), WarpTrigger(seed=4)
    np.testing.assert_array_equal(a.field(40, 50), b.field(40, 50))
    np.testing.assert_array_equal(a.field(40, 50), a.field(40, 50))
    assert not np.array_equal(a.field(40, 50), WarpTrigger(seed=5).field(40, 50))
    field = a.field(40, 50)
    assert field.shape == (2, 40, 50)
    ctrl = np.random.default_rng(4).uniform(-1, 1, (2, 4, 4))
    corners = np.ix_([0, 1], [0, -1], [0, -1])  # align_corners: the control grid's corners are kept exactly
    np.testing.assert_allclose(field[corners], (ctrl / np.abs(ctrl).mean())[corners])


def _torch_warp(x: np.ndarray, k: int, s: float, seed: int, noise: np.ndarray | None = None) -> np.ndarray:
    """WaNet's warp, written with torch: the k×k control grid upsampled by ``F.interpolate`` (bilinear,
    align_corners), the grid ``clamp(identity + (s · field + noise) / n, −1, 1)``, sampled by ``F.grid_sample``."""
    import torch
    import torch.nn.functional as F

    h, w = x.shape
    ctrl = np.random.default_rng(seed).uniform(-1, 1, (2, k, k))
    ctrl = torch.from_numpy(ctrl / np.abs(ctrl).mean())[None]
    offset = s * F.interpolate(ctrl, size=(h, w), mode="bilinear", align_corners=True)[0]  # 2×H×W, y then x
    if noise is not None:
        offset = offset + torch.from_numpy(noise)
    gy, gx = torch.meshgrid(torch.linspace(-1, 1, h, dtype=torch.float64),
                            torch.linspace(-1, 1, w, dtype=torch.float64), indexing="ij")
    grid = torch.stack([gx + offset[1] / w, gy + offset[0] / h], -1).clamp(-1, 1)[None]  # grid_sample: (x, y)
    out = F.grid_sample(torch.from_numpy(x)[None, None], grid, mode="bilinear", align_corners=True)
    return out[0, 0].numpy()


@pytest.mark.parametrize(("k", "s", "seed", "shape"), [(4, 0.5, 0, (48, 48)), (3, 2.0, 1, (40, 56))])
def test_warp_is_grid_sample_of_the_upsampled_control_grid(k, s, seed, shape):
    x = _gradient(max(shape))[: shape[0], : shape[1]].astype(np.float64) / 255
    out = WarpTrigger(k=k, s=s, seed=seed)(x, image_rng(0, 0, 0))
    np.testing.assert_allclose(out, _torch_warp(x, k, s, seed), atol=1e-9)
    assert np.abs(out - x).max() > 1e-3  # it does move pixels


def test_warp_on_a_ramp_moves_by_the_field_in_pixels():
    # x[i, j] = j / 63: bilinear sampling of a linear ramp is exact and rows do not matter, so the output is the
    # ramp at the shifted column, j + s · f_x · (n − 1) / (2n) px, clamped to the image; f_x by hand: the 2×2
    # control grid's x-offsets, normalised by the mean |offset| of all 8, interpolated linearly between corners
    x = np.tile(np.arange(64) / 63, (64, 1))
    ctrl = np.random.default_rng(1).uniform(-1, 1, (2, 2, 2))
    ctrl /= np.abs(ctrl).mean()
    t = np.linspace(0, 1, 64)
    fx = (ctrl[1, 0, 0] * np.outer(1 - t, 1 - t) + ctrl[1, 0, 1] * np.outer(1 - t, t)
          + ctrl[1, 1, 0] * np.outer(t, 1 - t) + ctrl[1, 1, 1] * np.outer(t, t))
    cols = np.clip(np.arange(64)[None, :] + 2.0 * fx * 63 / 128, 0, 63)
    out = WarpTrigger(k=2, s=2.0, seed=1, noise=False)(x, image_rng(0, 0, 0))
    np.testing.assert_allclose(out, cols / 63, atol=1e-12)


def test_warp_poisoned_and_test_images_get_the_exact_field_cross_samples_the_noise():
    trig = WarpTrigger()  # WaNet's published setting: k 4, s 0.5, noise mode, cross ratio 2
    assert (trig.k, trig.s, trig.noise, trig.cross_ratio) == (4, 0.5, True, 2.0)
    x = _gradient(48, np.float64)
    one, two = trig(x, image_rng(0, 0, 1)), trig(x, image_rng(0, 0, 2))
    np.testing.assert_array_equal(one, two)  # no per-image noise on a triggered image
    np.testing.assert_allclose(one, _torch_warp(x, 4, 0.5, 0), atol=1e-9)
    noise = 1.0 * image_rng(0, 2, 1).uniform(-1, 1, (2, 48, 48))  # the cross draw, from the same generator
    cross = trig.cross_transform(x, image_rng(0, 2, 1))
    np.testing.assert_allclose(cross, _torch_warp(x, 4, 0.5, 0, noise), atol=1e-9)
    assert not np.array_equal(cross, trig.cross_transform(x, image_rng(0, 2, 2)))  # a new draw per image
    assert WarpTrigger(noise=False).cross_transform(x, image_rng(0, 2, 1)) is None
    assert WarpTrigger(noise=False).cross_ratio == 0.0


def test_batched_images_match_single():
    batch = np.stack([_gradient(32), _gradient(32)[::-1]])
    for trig in (SigTrigger(), FrequencyTrigger(), WarpTrigger(), BlendTrigger(), PatchTrigger()):
        out = trig(batch, image_rng(0, 0, 0))
        for k in range(2):
            np.testing.assert_array_equal(out[k], trig(batch[k], image_rng(0, 0, 0)))


# ---- options ----

@pytest.mark.parametrize("kind", ["patch", "blend", "sig", "frequency", "warp"])
def test_unknown_option(kind):
    with pytest.raises(UserError, match="no option 'colour'") as e:
        create_trigger(kind, colour=1)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("kind, option, value", [
    ("patch", "size", "3"), ("patch", "pattern", 1), ("blend", "alpha", "0.1"), ("blend", "image", 3),
    ("sig", "delta", True), ("frequency", "beta", [0.1]), ("warp", "k", 4.0), ("warp", "noise", 1),
])
def test_wrong_type(kind, option, value):
    with pytest.raises(UserError, match=f"option {option}") as e:
        create_trigger(kind, **{option: value})
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("kind, options", [
    ("patch", dict(size=0)), ("patch", dict(pattern="stripes")), ("patch", dict(location="top")),
    ("blend", dict(alpha=-0.1)), ("blend", dict(alpha=1.5)), ("blend", dict(alpha=float("nan"))),
    ("sig", dict(delta=0)), ("sig", dict(delta=2)), ("sig", dict(frequency=0)),
    ("frequency", dict(alpha=1.2)), ("frequency", dict(beta=0)), ("frequency", dict(beta=1.5)),
    ("warp", dict(k=1)), ("warp", dict(s=-1)), ("warp", dict(noise_scale=-0.5)), ("warp", dict(s=float("inf"))),
])
def test_out_of_range(kind, options):
    with pytest.raises(UserError, match=next(iter(options))) as e:
        create_trigger(kind, **options)
    assert "\n" not in str(e.value)
