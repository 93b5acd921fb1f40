"""MedMNIST 2D single-label flags: tiny ``.npz`` files in MedMNIST's exact key layout, written on the fly (no
network). Expected pixels and one-hot rows are computed here, from the arrays the test wrote."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from conftest import install_medmnist

from medbackdoor.cli import main
from medbackdoor.data import DATASETS, OCTMNIST, SPLITS, DermaMNIST, MedMNIST2D, RetinaMNIST, create_dataset
from medbackdoor.data import chestmnist as cm
from medbackdoor.data import medmnist2d as m2
from medbackdoor.errors import UserError
from medbackdoor.labels import label_index

COUNTS = {"train": 10, "val": 3, "test": 5}
# flag: (task kind, number of classes, channels), written out by hand from MedMNIST's INFO
EXPECTED = {
    "pathmnist": ("multiclass", 9, 3), "dermamnist": ("multiclass", 7, 3), "octmnist": ("multiclass", 4, 1),
    "pneumoniamnist": ("binary", 2, 1), "retinamnist": ("multiclass", 5, 3), "breastmnist": ("binary", 2, 1),
    "bloodmnist": ("multiclass", 8, 3), "tissuemnist": ("multiclass", 8, 1), "organamnist": ("multiclass", 11, 1),
    "organcmnist": ("multiclass", 11, 1), "organsmnist": ("multiclass", 11, 1),
}


def write_flag(root: Path, flag: str, size: int = 28, counts: dict | None = None, compressed: bool = True,
               channel: bool = False, fortran: bool = False, seed: int = 0, drop: tuple[str, ...] = (),
               replace: dict | None = None, name: str | None = None) -> dict[str, np.ndarray]:
    """A MedMNIST file for ``flag``: N×S×S (gray) or N×S×S×3 (colour) uint8 images, N×1 uint8 class indices."""
    _, n_classes, channels = EXPECTED[flag]
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (counts or COUNTS).items():
        shape = (n, size, size) if channels == 1 else (n, size, size, 3)
        images = rng.integers(0, 256, size=shape, dtype=np.uint8)
        if channel:
            images = images[..., None]
        if fortran:
            images = np.asfortranarray(images)
        labels = (np.arange(n) % n_classes).astype(np.uint8)[:, None]  # row i: class i mod C
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    arrays.update(replace or {})
    root.mkdir(parents=True, exist_ok=True)
    out = {k: v for k, v in arrays.items() if k not in drop}
    (np.savez_compressed if compressed else np.savez)(root / (name or m2.file_name(size, flag)), **out)
    return arrays


pytestmark = pytest.mark.usefixtures("medmnist_isolated")  # no real home, cache or medmnist


fake_medmnist = install_medmnist


def one_line(err) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize("flag", ["octmnist", "dermamnist"])
@pytest.mark.parametrize("compressed", [True, False])
def test_pixels_splits_and_names(tmp_path, flag, compressed, no_medmnist):
    arrays = write_flag(tmp_path / "mm", flag, size=28, compressed=compressed)
    ds = create_dataset(flag, root=str(tmp_path / "mm"), size=28, download=False, unpack_dir=str(tmp_path / "up"))
    colour = flag == "dermamnist"
    assert ds.channels == (3 if colour else 1) and len(ds) == sum(COUNTS.values())
    for split, n in COUNTS.items():
        idx = ds.split_indices(split)
        assert ds.names[idx].tolist() == [f"{split}_{i:06d}" for i in range(n)]
        for row, i in enumerate(idx):
            img = ds.read_source(int(i))
            stored = arrays[f"{split}_images"][row]
            assert img.dtype == np.uint8 and img.flags.c_contiguous
            if colour:
                assert img.shape == (3, 28, 28)
                for c in range(3):  # channel first: plane c is the stored last-axis channel c
                    np.testing.assert_array_equal(img[c], stored[:, :, c])
            else:
                assert img.shape == (28, 28)
                np.testing.assert_array_equal(img, stored)
    assert (ds.patients == ds.names).all() and not ds.has_patient_ids
    summary = ds.summary()
    assert summary["patient_overlap"] is None and {s: summary["splits"][s]["images"] for s in COUNTS} == COUNTS
    assert len(list((tmp_path / "up").rglob("*.npy"))) == (3 if compressed else 0)


@pytest.mark.parametrize("flag", ["pathmnist", "pneumoniamnist", "organsmnist"])
def test_labels_are_one_hot_rows(tmp_path, flag, no_medmnist):
    arrays = write_flag(tmp_path, flag)
    ds = create_dataset(flag, root=str(tmp_path), size=28, download=False)
    n_classes = EXPECTED[flag][1]
    assert ds.labels.dtype == np.float32 and ds.labels.shape == (len(ds), n_classes)
    for split in SPLITS:
        for row, i in enumerate(ds.split_indices(split)):
            expected = [0.0] * n_classes
            expected[int(arrays[f"{split}_labels"][row, 0])] = 1.0
            assert ds.labels[i].tolist() == expected
    ds.task.check_labels(ds.labels)


@pytest.mark.parametrize("flag", sorted(EXPECTED))
def test_every_flag_declares_its_task(flag):
    kind, n_classes, channels = EXPECTED[flag]
    cls = DATASETS.get(flag)
    assert issubclass(cls, MedMNIST2D) and cls.name == cls.flag == flag
    assert cls.task_kind == kind and cls.channels == channels and len(cls.label_names) == n_classes
    assert len({n.lower() for n in cls.label_names}) == n_classes  # distinct, also case-insensitively
    assert cls.license == ("CC BY-NC 4.0" if flag == "dermamnist" else "CC BY 4.0") and cls.source


def test_label_names():
    assert RetinaMNIST.label_names == ("grade 0", "grade 1", "grade 2", "grade 3", "grade 4")
    assert label_index("Grade 4", RetinaMNIST.label_names) == 4
    assert DATASETS.get("breastmnist").label_names == ("malignant", "normal, benign")
    assert DermaMNIST.label_names[4] == "melanoma" and OCTMNIST.label_names[3] == "normal"
    assert DATASETS.get("tissuemnist").label_names[0] == "Collecting Duct, Connecting Tubule"
    assert m2.label_names("x", ["a", "A", " a  b ", "a b"]) == ("a", "A (2)", "a b", "a b (2)")
    with pytest.raises(UserError, match="multi-label"):
        m2.task_kind("multi-label, binary-class")


@pytest.mark.parametrize("size", [28, 64, 128, 224])
def test_file_name_for_every_size(tmp_path, size, no_medmnist):
    expected = "pneumoniamnist.npz" if size == 28 else f"pneumoniamnist_{size}.npz"
    assert m2.file_name(size, "pneumoniamnist") == expected
    assert m2.file_name(size, "bloodmnist") == expected.replace("pneumoniamnist", "bloodmnist")
    arrays = write_flag(tmp_path, "pneumoniamnist", size=size, counts={"train": 2, "val": 1, "test": 1})
    assert (tmp_path / expected).is_file()
    ds = create_dataset("pneumoniamnist", root=str(tmp_path), size=size, download=False)
    assert ds.path.name == expected and ds.read_source(3).shape == (size, size)
    np.testing.assert_array_equal(ds.read_source(3), arrays["test_images"][0])


def test_trailing_channel_and_fortran_order(tmp_path, no_medmnist):
    arrays = write_flag(tmp_path / "g", "octmnist", channel=True, fortran=True, compressed=False)
    ds = OCTMNIST(tmp_path / "g", size=28, download=False)
    i = int(ds.split_indices("test")[4])
    np.testing.assert_array_equal(ds.read_source(i), arrays["test_images"][4, :, :, 0])
    arrays = write_flag(tmp_path / "c", "dermamnist", fortran=True, compressed=True)
    ds = DermaMNIST(tmp_path / "c", size=28, download=False)
    np.testing.assert_array_equal(ds.read_source(i), np.stack([arrays["test_images"][4, :, :, c] for c in range(3)]))


def test_limit_is_per_split_and_seeded(tmp_path, no_medmnist):
    arrays = write_flag(tmp_path, "bloodmnist")
    a = create_dataset("bloodmnist", root=str(tmp_path), size=28, download=False, limit=2, seed=1)
    b = create_dataset("bloodmnist", root=str(tmp_path), size=28, download=False, limit=2, seed=1)
    assert len(a) == 6 and a.names.tolist() == b.names.tolist()
    for i, name in enumerate(a.names):
        split, row = name.rsplit("_", 1)
        np.testing.assert_array_equal(a.read_source(i), np.moveaxis(arrays[f"{split}_images"][int(row)], -1, 0))
        assert a.labels[i].argmax() == arrays[f"{split}_labels"][int(row), 0]
    c = create_dataset("bloodmnist", root=str(tmp_path), size=28, download=False, limit=2, seed=2)
    assert a.fingerprint() != c.fingerprint()


def _refused(tmp_path, flag: str, **replace) -> str:
    write_flag(tmp_path, flag, replace=replace)
    with pytest.raises(UserError) as err:
        create_dataset(flag, root=str(tmp_path), size=28, download=False)
    text = one_line(err)
    assert text.startswith(f"{flag}: ") and m2.file_name(28, flag) in text
    return text


def test_refuses_bad_labels(tmp_path, no_medmnist):
    text = _refused(tmp_path, "octmnist", val_labels=np.array([[0], [4], [1]], dtype=np.uint8))
    assert "val_labels has 1 class indices outside 0..3 (e.g. 4 in row 1)" in text
    text = _refused(tmp_path, "octmnist", test_labels=np.array([[0], [1], [-1], [2], [3]], dtype=np.int8))
    assert "test_labels has 1 class indices outside 0..3 (e.g. -1 in row 2)" in text
    text = _refused(tmp_path, "pneumoniamnist", train_labels=np.zeros((10, 2), dtype=np.uint8))
    assert "train_labels is uint8 (10, 2), expected N×1 integer class indices (0..1)" in text
    text = _refused(tmp_path, "pneumoniamnist", train_labels=np.zeros((10, 1), dtype=np.float32))
    assert "train_labels is float32 (10, 1), expected N×1 integer" in text
    text = _refused(tmp_path, "pneumoniamnist", train_labels=np.zeros(10, dtype=np.uint8))
    assert "train_labels is uint8 (10,), expected N×1" in text
    # an object array is stored as a pickle: refused from its header, never loaded
    text = _refused(tmp_path, "dermamnist", test_labels=np.array([[{"a": 1}]] * 5, dtype=object))
    assert "test_labels is object (5, 1)" in text


def test_refuses_bad_images(tmp_path, no_medmnist):
    gray = np.zeros((10, 28, 28), dtype=np.uint8)
    text = _refused(tmp_path, "dermamnist", train_images=gray)  # a colour flag holding gray images
    assert "train_images is uint8 (10, 28, 28), expected uint8 (10, 28, 28, 3) (RGB, channel last" in text
    text = _refused(tmp_path, "octmnist", train_images=np.zeros((10, 28, 28, 3), dtype=np.uint8))
    assert "expected uint8 (10, 28, 28) (gray" in text
    text = _refused(tmp_path, "octmnist", val_images=np.zeros((2, 28, 28), dtype=np.uint8))
    assert "val_images is uint8 (2, 28, 28), expected uint8 (3, 28, 28) (gray, 3 images like val_labels)" in text
    text = _refused(tmp_path, "octmnist", test_images=np.zeros((5, 28, 28), dtype=np.float32))
    assert "test_images is float32" in text
    write_flag(tmp_path, "breastmnist", size=28, name="breastmnist_64.npz")  # 28 px arrays in the 64 px file
    with pytest.raises(UserError, match=r"train_images is uint8 \(10, 28, 28\), expected uint8 \(10, 64, 64\)"):
        create_dataset("breastmnist", root=str(tmp_path), size=64, download=False)


@pytest.mark.parametrize("drop", [("val_images",), ("train_labels", "test_labels")])
def test_refuses_missing_keys(tmp_path, drop, no_medmnist):
    write_flag(tmp_path, "retinamnist", drop=drop)
    with pytest.raises(UserError, match="retinamnist: .*retinamnist.npz lacks " + ", ".join(drop)) as err:
        create_dataset("retinamnist", root=str(tmp_path), size=28, download=False)
    one_line(err)


def test_refuses_truncated_file(tmp_path, no_medmnist):
    write_flag(tmp_path, "bloodmnist")
    path = tmp_path / "bloodmnist.npz"
    path.write_bytes(path.read_bytes()[:1500])
    with pytest.raises(UserError, match="bloodmnist: .* is not a readable .npz") as err:
        create_dataset("bloodmnist", root=str(tmp_path), size=28, download=False)
    one_line(err)


@pytest.mark.parametrize("size", [32, 0, True, "64", None])
def test_bad_size(tmp_path, size):
    with pytest.raises(UserError, match="pathmnist size must be one of 28, 64, 128, 224") as err:
        create_dataset("pathmnist", root=str(tmp_path), size=size, download=False)
    one_line(err)


def test_missing_file(tmp_path, no_medmnist):
    with pytest.raises(UserError, match="dermamnist_128.npz not found and download is off") as err:
        DermaMNIST(tmp_path, size=128, download=False)
    assert str(tmp_path) in one_line(err)
    with pytest.raises(UserError) as err:  # download on, but no medmnist for the URL
        DermaMNIST(tmp_path, size=64)
    text = one_line(err)
    assert text.startswith(cm.install_hint("dermamnist")) and "pip install 'medbackdoor[medmnist]'" in text
    assert "dermamnist_64.npz" in text and str(tmp_path) in text


def test_default_root_and_default_size(tmp_path, no_medmnist):
    write_flag(tmp_path / "home" / ".medmnist", "organamnist", size=64)
    ds = create_dataset("organamnist", download=False)
    assert ds.size == 64 and ds.path == tmp_path / "home" / ".medmnist" / "organamnist_64.npz"


def test_base_class_is_not_a_dataset(tmp_path):
    with pytest.raises(UserError, match="pathmnist, dermamnist"):
        MedMNIST2D(tmp_path)


def test_copy_table_matches_installed_medmnist():
    pytest.importorskip("medmnist")
    from medmnist.info import INFO

    for flag, copy in m2.MEDMNIST_2D.items():
        info = INFO[flag]
        assert tuple(info["label"][str(i)] for i in range(len(info["label"]))) == copy["label"], flag
        for key in ("task", "n_channels", "n_samples", "license"):
            assert info[key] == copy[key], (flag, key)
        for size in (28, 64, 128, 224):
            suffix = "" if size == 28 else f"_{size}"
            assert info[f"url{suffix}"].split("?")[0].endswith("/" + m2.file_name(size, flag))


def test_installed_medmnist_info_is_used(tmp_path, monkeypatch):
    """Where medmnist is importable its INFO gives the labels (by index), not the copy."""
    renamed = {str(i): f"class {chr(97 + i)}" for i in range(4)}
    fake_medmnist(monkeypatch, {"octmnist": {"label": renamed, "task": "multi-class", "n_channels": 1}})
    write_flag(tmp_path, "octmnist")
    ds = OCTMNIST(tmp_path, size=28, download=False)
    assert ds.label_names == ("class a", "class b", "class c", "class d") == ds.medmnist_labels
    assert OCTMNIST.label_names[0] == "choroidal neovascularization"  # the class keeps the copy's
    fake_medmnist(monkeypatch, {"octmnist": {"label": {"0": "a", "1": "b"}}})  # fewer classes than the file holds
    with pytest.raises(UserError, match="class indices outside 0..1"):
        OCTMNIST(tmp_path, size=28, download=False)


@pytest.mark.parametrize("flag", sorted(EXPECTED))
def test_example_builds_and_keeps_the_contract(flag, tmp_path, no_medmnist):
    """Each flag's miniature (what the registry conformance tests build from), checked with its channels."""
    options = DATASETS.get(flag).example(tmp_path / "data")
    assert (tmp_path / "data" / f"{flag}.npz").is_file()
    ds = create_dataset(flag, **options)
    kind, n_classes, channels = EXPECTED[flag]
    assert ds.labels.shape == (len(ds), n_classes) and ds.task_kind == kind
    ds.task.check_labels(ds.labels)
    train = ds.labels[ds.split_indices("train")]
    assert (train.sum(0) > 0).all()  # every class in train
    assert all(len(ds.split_indices(s)) >= 8 for s in SPLITS)
    for i in (0, len(ds) - 1):
        image = ds.read_source(i)
        assert image.dtype == np.uint8 and image.shape == ((28, 28) if channels == 1 else (3, 28, 28))
    assert json.dumps(ds.summary())
    assert create_dataset(flag, **options).fingerprint() == ds.fingerprint()
    fewer = create_dataset(flag, **{**options, "limit": 2})
    assert len(fewer) == 6 and fewer.fingerprint() != ds.fingerprint()


def test_pickle_carries_no_pixels(tmp_path, no_medmnist):
    arrays = write_flag(tmp_path, "pathmnist", size=64, counts={"train": 60, "val": 3, "test": 5})
    ds = create_dataset("pathmnist", root=str(tmp_path), size=64, download=False)
    ds.read_source(0)
    blob = pickle.dumps(ds)
    assert len(blob) < arrays["train_images"].nbytes / 4
    clone = pickle.loads(blob)
    for i in (0, 59, 62, 67):
        np.testing.assert_array_equal(clone.read_source(i), ds.read_source(i))
    assert len(list((tmp_path / "cache" / "pathmnist").rglob("*.npy"))) == 3  # the default unpack folder


def test_cli_data_check_gray(tmp_path, capsys, no_medmnist):
    write_flag(tmp_path, "pneumoniamnist")
    code = main(["data", "check", "--set", "dataset.name=pneumoniamnist", "--set", f"dataset.root={tmp_path}",
                 "--set", "dataset.options.size=28", "--set", "dataset.options.download=false", "--json",
                 "--workers", "0"])
    out, err = capsys.readouterr()
    assert code == 0, err
    report = json.loads(out)
    assert {s: report["splits"][s]["images"] for s in COUNTS} == COUNTS
    assert report["splits"]["train"]["positives"] == {"normal": 5, "pneumonia": 5}


def test_download_uses_medmnist_url_and_md5(tmp_path, monkeypatch, serve):
    folder, base = serve
    arrays = write_flag(folder, "dermamnist", size=64)
    blob = (folder / "dermamnist_64.npz").read_bytes()
    fake_medmnist(monkeypatch, {"dermamnist": {"url_64": f"{base}/dermamnist_64.npz?download=1",
                                               "MD5_64": hashlib.md5(blob).hexdigest()}})
    root = tmp_path / "mm"
    ds = DermaMNIST(root, size=64)
    assert (root / "dermamnist_64.npz").read_bytes() == blob
    assert sorted(p.name for p in root.iterdir()) == ["dermamnist_64.npz"]  # no temporary left behind
    np.testing.assert_array_equal(ds.read_source(0), np.moveaxis(arrays["train_images"][0], -1, 0))
    fake_medmnist(monkeypatch, {"dermamnist": {"url": f"{base}/dermamnist.npz?download=1", "MD5": "0" * 32}})
    with pytest.raises(UserError, match="dermamnist: could not download") as err:
        DermaMNIST(root, size=28)
    assert f"place it at {root / 'dermamnist.npz'}" in one_line(err)
    assert sorted(p.name for p in root.iterdir()) == ["dermamnist_64.npz"]
