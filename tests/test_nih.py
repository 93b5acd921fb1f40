import numpy as np
import pytest
from PIL import Image

from medbackdoor.data import NIHChestXray14, create_dataset
from medbackdoor.errors import UserError
from medbackdoor.labels import LABELS, parse_findings
from tests.conftest import make_nih


def test_official_layout_with_missing_images(nih_root):
    ds = create_dataset("nih", root=nih_root)
    assert ds.missing == 4 and len(ds) == 36 - 4
    s = ds.summary()
    assert s["patient_overlap"] == 0
    assert s["splits"]["test"]["images"] + s["splits"]["train"]["images"] + s["splits"]["val"]["images"] == 32
    assert s["splits"]["val"]["images"] > 0


def test_labels_follow_csv(tmp_path):
    info = make_nih(tmp_path)
    ds = NIHChestXray14(tmp_path)
    expected = dict(zip([r[0] for r in info["rows"]], parse_findings([r[1] for r in info["rows"]])))
    for name, row in zip(ds.names, ds.labels):
        np.testing.assert_array_equal(row, expected[name])
    assert set(ds.names[ds.splits == "test"]) == set(info["test"])


@pytest.mark.parametrize("sex,csv", [("Patient Gender", "Data_Entry_2017_v2020.csv"),
                                     ("Patient Sex", "Data_Entry_2017.csv")])
def test_both_csv_spellings(tmp_path, sex, csv):
    make_nih(tmp_path, sex_column=sex, csv_name=csv, flat=True)
    assert len(NIHChestXray14(tmp_path)) == 36


def test_validation_is_patient_wise_and_seeded(tmp_path):
    make_nih(tmp_path, n_patients=40, per_patient=3)
    a, b = NIHChestXray14(tmp_path, seed=1), NIHChestXray14(tmp_path, seed=1)
    np.testing.assert_array_equal(a.splits, b.splits)
    val, train = set(a.patients[a.splits == "val"]), set(a.patients[a.splits == "train"])
    assert val and not (val & train)
    assert abs((a.splits == "val").sum() - 0.1 * (a.splits != "test").sum()) <= 3
    c = NIHChestXray14(tmp_path, seed=2, val_fraction=0.3)
    assert (c.splits == "val").sum() > (a.splits == "val").sum()


def test_chexnet_lists(tmp_path):
    info = make_nih(tmp_path)
    names = info["names"]
    for split, part in (("train", names[:20]), ("val", names[20:26]), ("test", names[26:])):
        lines = [f"images/{n} " + " ".join(["1"] + ["0"] * 13) for n in part]
        (tmp_path / f"{split}_list.txt").write_text("\n".join(lines) + "\n")
    ds = NIHChestXray14(tmp_path)
    assert ds.split_scheme == "chexnet"
    assert (ds.splits == "val").sum() == 6 and (ds.labels[:, 0] == 1).all()


def test_images_are_8bit_gray_whatever_the_file(nih_root):
    ds = NIHChestXray14(nih_root)
    for i in range(6):
        img = ds.read_source(i)
        assert img.dtype == np.uint8 and img.ndim == 2
        raw = Image.open(ds.path(i))
        if raw.mode in ("RGB", "RGBA", "L"):
            np.testing.assert_array_equal(img, np.asarray(raw.convert("RGB"))[..., 0])


def test_all_missing_fails_clearly(tmp_path):
    make_nih(tmp_path, missing=36)
    with pytest.raises(UserError, match="none of the 36 listed images"):
        NIHChestXray14(tmp_path)


def test_missing_root_csv_and_lists(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        NIHChestXray14(tmp_path / "nope")
    with pytest.raises(UserError, match="no label table"):
        NIHChestXray14(tmp_path)
    make_nih(tmp_path)
    (tmp_path / "test_list.txt").unlink()
    with pytest.raises(UserError, match="test_list.txt"):
        NIHChestXray14(tmp_path)


def test_unparsable_csv(tmp_path):
    make_nih(tmp_path)
    (tmp_path / "Data_Entry_2017_v2020.csv").write_text("just,one\n\"unterminated\n")
    with pytest.raises(UserError):
        NIHChestXray14(tmp_path)


@pytest.mark.parametrize("entry", ["../../etc/passwd", "/etc/passwd", "..\\x.png"])
def test_paths_cannot_escape_root(tmp_path, entry):
    make_nih(tmp_path)
    with open(tmp_path / "train_val_list.txt", "a") as f:
        f.write(entry + "\n")
    with pytest.raises(UserError, match="not a plain file name"):
        NIHChestXray14(tmp_path)


def test_corrupt_image_named(tmp_path):
    make_nih(tmp_path)
    ds = NIHChestXray14(tmp_path)
    ds.path(0).write_bytes(ds.path(0).read_bytes()[:60])
    with pytest.raises(UserError, match=ds.names[0]):
        ds.read_source(0)


def test_limit_per_split(nih_root):
    ds = NIHChestXray14(nih_root, limit=3)
    assert all((ds.splits == s).sum() <= 3 for s in ("train", "val", "test"))


def test_real_nih_sample(shared_data, tmp_path):
    """The 1,000 real 64 px radiographs (RGB/RGBA files) laid out as the release is."""
    src = shared_data / "nih1000-64"
    root = tmp_path / "real"
    (root / "images_001").mkdir(parents=True)
    (root / "images_001" / "images").symlink_to(src / "images")
    table = (src / "labels.csv").read_text()
    (root / "Data_Entry_2017_v2020.csv").write_text(table)
    names = [line.split(",")[0] for line in table.splitlines()[1:]]
    patients = sorted({int(n[:8]) for n in names})
    test_p = set(patients[::5])
    (root / "test_list.txt").write_text("\n".join(n for n in names if int(n[:8]) in test_p))
    (root / "train_val_list.txt").write_text("\n".join(n for n in names if int(n[:8]) not in test_p))
    ds = NIHChestXray14(root)
    assert len(ds) == 1000 and ds.missing == 0 and ds.summary()["patient_overlap"] == 0
    img = ds.read_source(0)
    assert img.shape == (64, 64) and img.dtype == np.uint8
    raw = np.asarray(Image.open(ds.path(0)))
    np.testing.assert_array_equal(img, raw[..., 0] if raw.ndim == 3 else raw)
    assert ds.labels.sum(0)[LABELS.index("Effusion")] == 170
