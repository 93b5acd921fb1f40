import numpy as np
import pytest
import torch

from medbackdoor.errors import UserError
from medbackdoor.labels import LABELS
from medbackdoor.triggers import TRIGGERS, SquareTrigger, apply_trigger, create_trigger, image_rng


def test_primitive_exact_pixels_uint8():
    x = np.full((5, 5), 200, np.uint8)
    m = np.zeros((5, 5), np.float32)
    m[1:3, 2:4] = 1
    out = apply_trigger(x, 0, m)
    assert out.dtype == np.uint8
    assert (out[1:3, 2:4] == 0).all()
    assert out.sum() == 200 * 21


def test_primitive_blends_fractional_mask_and_works_on_torch():
    x = torch.full((1, 4, 4), 1.0)
    m = torch.zeros(4, 4)
    m[0, 0] = 0.5
    out = apply_trigger(x, torch.zeros(4, 4), m)
    assert out[0, 0, 0] == pytest.approx(0.5) and out[0, 1, 1] == 1.0
    assert x.eq(1.0).all()  # not mutated


def test_square_center_exact():
    img = np.full((8, 8), 255, np.uint8)
    out = SquareTrigger(size=3, value=0.0, location="center")(img, image_rng(0, 0, 0))
    expected = img.copy()
    expected[2:5, 2:5] = 0
    np.testing.assert_array_equal(out, expected)
    assert (img == 255).all()


def test_square_value_scales_with_dtype():
    out = SquareTrigger(size=1, value=1.0)(np.zeros((3, 3), np.uint8), image_rng(0, 0, 0))
    assert out[1, 1] == 255
    outf = SquareTrigger(size=1, value=1.0)(np.zeros((3, 3), np.float32), image_rng(0, 0, 0))
    assert outf[1, 1] == 1.0


@pytest.mark.parametrize("size", [1, 2, 3, 4, 7])
def test_random_location_always_inside_and_seeded(size):
    trig = SquareTrigger(size=size, location="random")
    seen = set()
    for index in range(200):
        top, left, bottom, right = trig.box(9, 11, image_rng(5, 0, index))
        assert 0 <= top and bottom <= 9 and 0 <= left and right <= 11
        assert (bottom - top, right - left) == (size, size)
        seen.add((top, left))
    assert len(seen) > 1
    assert trig.box(9, 11, image_rng(5, 0, 3)) == trig.box(9, 11, image_rng(5, 0, 3))


def test_random_location_reaches_every_corner():
    trig = SquareTrigger(size=2, location="random")
    boxes = {trig.box(4, 4, image_rng(1, 0, i))[:2] for i in range(400)}
    assert boxes == {(t, c) for t in range(3) for c in range(3)}


def test_trigger_larger_than_image_is_a_user_error():
    with pytest.raises(UserError, match="larger than"):
        SquareTrigger(size=5)(np.zeros((4, 4), np.uint8), image_rng(0, 0, 0))


@pytest.mark.parametrize("bad", [dict(size=0), dict(size=2.5), dict(value=1.5), dict(location="corner")])
def test_bad_trigger_options(bad):
    with pytest.raises(UserError):
        SquareTrigger(**bad)


@pytest.mark.parametrize("kind", TRIGGERS.names())
def test_every_registered_trigger_changes_only_its_box(kind):
    trig = create_trigger(kind)
    img = np.full((32, 32), 128, np.uint8)
    out = trig(img, image_rng(0, 0, 1))
    top, left, bottom, right = trig.box(32, 32, image_rng(0, 0, 1))  # the whole image for a transform trigger
    inside = np.zeros(img.shape, bool)
    inside[top:bottom, left:right] = True
    assert out.shape == img.shape and out.dtype == img.dtype
    assert (out[~inside] == 128).all()
    assert (img == 128).all()


def test_unknown_trigger_kind():
    with pytest.raises(UserError, match="square"):
        create_trigger("no-such-trigger")


def _stamped_pixels(config) -> set[tuple[int, int]]:
    """Where the configured trigger changes a mid-gray image of the config's input size."""
    from medbackdoor.experiment import build_trigger

    size = config.image_size
    img = np.full((size, size), 128, np.uint8)
    out = build_trigger(config, LABELS)[0](img, image_rng(0, 0, 0))
    return {(int(r), int(c)) for r, c in zip(*np.nonzero(out != img))}


@pytest.mark.parametrize("config_file", [None, "quick"])
def test_config_path_leaves_the_patch_in_its_corner(config_file):
    from medbackdoor.config import load_config

    config = load_config(config_file, ["trigger.kind=patch", "image_size=32"])
    # BadNets' corner, written out: a 3×3 patch whose bottom-right pixel is 1 px from both edges of a 32 px image,
    # rows and columns 28..30; the checkerboard leaves the four pixels with odd i + j black, which mid-gray shows.
    assert _stamped_pixels(config) == {(r, c) for r in range(28, 31) for c in range(28, 31)}


@pytest.mark.parametrize("config_file", [None, "quick"])
def test_config_path_keeps_the_papers_square_and_set_keys_still_apply(config_file):
    from medbackdoor.config import load_config

    # the paper's 3×3 black square with its top-left pixel at ((32 − 3) // 2, (32 − 3) // 2) = (14, 14)
    assert _stamped_pixels(load_config(config_file, ["image_size=32"])) == {(r, c) for r in (14, 15, 16)
                                                                           for c in (14, 15, 16)}
    config = load_config(config_file, ["trigger.kind=patch", "image_size=32", "trigger.location=center",
                                       "trigger.size=2"])
    assert _stamped_pixels(config) == {(15, 15), (15, 16), (16, 15), (16, 16)}


def test_report_conditions_read_unset_trigger_keys_as_the_kinds_defaults():
    from medbackdoor.config import flatten, load_config
    from medbackdoor.report.aggregate import condition_of

    def condition(*overrides):
        return condition_of(flatten(load_config(overrides=list(overrides)).to_dict()))

    # a square left at its defaults and one set to the paper's 3 px, centre, black are one condition
    assert condition() == condition("trigger.size=3", "trigger.location=center", "trigger.value=0.0")
    patch = condition("trigger.kind=patch")
    assert (patch["trigger.size"], patch["trigger.location"], patch["trigger.value"]) == (3, "corner", None)
    assert patch != condition("trigger.kind=patch", "trigger.location=center")  # the old centred patch differs
    random = condition_of(flatten(load_config("quick", ["trigger.location=random"]).to_dict()))
    assert (random["trigger.size"], random["trigger.location"]) == (3, "random")  # Table 2 pairs it at 3 px
    from medbackdoor.report.build import _label_keys

    # a sweep over kinds at their own defaults is labelled by the kind alone (the attack and defense tables)
    assert _label_keys([condition(), condition("trigger.kind=blend"), patch]) == ["trigger.kind"]
    sizes = [condition("trigger.size=2"), condition("trigger.size=3"), condition("trigger.kind=blend")]
    assert _label_keys(sizes) == ["trigger.size", "trigger.kind"]  # a size varied within a kind still names it
