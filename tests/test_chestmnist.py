"""ChestMNIST adapter: tiny ``.npz`` files in MedMNIST's exact key layout, written on the fly (no network)."""

from __future__ import annotations

import hashlib
import json
import pickle
import socket
from pathlib import Path

import numpy as np
import pytest
from conftest import install_medmnist

from medbackdoor.cli import main
from medbackdoor.data import ChestMNIST, create_dataset
from medbackdoor.data import chestmnist as cm
from medbackdoor.errors import UserError
from medbackdoor.labels import LABELS

COUNTS = {"train": 12, "val": 4, "test": 6}
PLEURAL = cm.MEDMNIST_LABELS.index("pleural")  # 12 in medmnist's own order


def write_npz(root: Path, size: int = 28, counts: dict | None = None, compressed: bool = True, channel: bool = False,
              fortran: bool = False, label_names: tuple[str, ...] = cm.MEDMNIST_LABELS, seed: int = 0,
              drop: tuple[str, ...] = (), name: str | None = None) -> dict[str, np.ndarray]:
    """A ChestMNIST file (MedMNIST keys, N×S×S uint8, N×14 uint8 labels in ``label_names`` column order)."""
    rng = np.random.default_rng(seed)
    counts = counts or COUNTS
    arrays = {}
    for split, n in counts.items():
        images = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
        labels = (rng.random((n, 14)) < 0.2).astype(np.uint8)
        labels[0] = 0
        labels[0, label_names.index("pleural")] = 1  # row 0 of each split: Pleural_Thickening only
        if n > 1:
            labels[1] = 0
            labels[1, label_names.index("hernia")] = 1
            labels[1, label_names.index("atelectasis")] = 1
        if channel:
            images = images[..., None]
        if fortran:
            images = np.asfortranarray(images)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    root.mkdir(parents=True, exist_ok=True)
    out = {k: v for k, v in arrays.items() if k not in drop}
    path = root / (name or cm.file_name(size))
    (np.savez_compressed if compressed else np.savez)(path, **out)
    return arrays


pytestmark = pytest.mark.usefixtures("medmnist_isolated")  # no real home, cache or medmnist


def fake_medmnist(monkeypatch, info: dict) -> None:
    """Install a stand-in ``medmnist`` package whose ``INFO["chestmnist"]`` is ``info``."""
    install_medmnist(monkeypatch, {"chestmnist": info})


def label_dict(names) -> dict:
    return {str(i): n for i, n in enumerate(names)}


@pytest.mark.parametrize("size", [28, 64])
@pytest.mark.parametrize("compressed", [True, False])
def test_splits_counts_and_images(tmp_path, size, compressed, no_medmnist):
    arrays = write_npz(tmp_path / "mm", size=size, compressed=compressed)
    ds = ChestMNIST(tmp_path / "mm", size=size, download=False, unpack_dir=tmp_path / "unpack")
    assert len(ds) == sum(COUNTS.values())
    for split, n in COUNTS.items():
        idx = ds.split_indices(split)
        assert len(idx) == n
        assert ds.names[idx].tolist() == [f"{split}_{i:06d}" for i in range(n)]
        for row, i in enumerate(idx):
            img = ds.read_source(int(i))
            assert img.dtype == np.uint8 and img.shape == (size, size) and img.flags.c_contiguous
            np.testing.assert_array_equal(img, arrays[f"{split}_images"][row])
    assert (ds.patients == ds.names).all()  # one pseudo-patient per image
    summary = ds.summary()
    assert summary["patient_overlap"] is None and summary["missing"] == 0  # no patient ids: not checkable
    assert {s: summary["splits"][s]["images"] for s in COUNTS} == COUNTS
    assert summary["splits"]["train"]["patients"] == COUNTS["train"]
    unpacked = list((tmp_path / "unpack").rglob("*.npy"))
    assert len(unpacked) == (3 if compressed else 0)  # stored members are mapped in place


def test_trailing_channel_and_fortran_order(tmp_path, no_medmnist):
    arrays = write_npz(tmp_path, size=28, channel=True, fortran=True, compressed=False)
    ds = ChestMNIST(tmp_path, size=28, download=False)
    i = int(ds.split_indices("test")[5])
    np.testing.assert_array_equal(ds.read_source(i), arrays["test_images"][5, :, :, 0])
    write_npz(tmp_path / "c", size=28, channel=True, fortran=True, compressed=True)
    ds = ChestMNIST(tmp_path / "c", size=28, download=False)
    np.testing.assert_array_equal(ds.read_source(i), arrays["test_images"][5, :, :, 0])


def test_labels_follow_medmnist_columns(tmp_path, no_medmnist):
    arrays = write_npz(tmp_path, size=28)
    ds = ChestMNIST(tmp_path, size=28, download=False)
    pleural, hernia, atel = (LABELS.index(n) for n in ("Pleural_Thickening", "Hernia", "Atelectasis"))
    for split in COUNTS:
        idx = ds.split_indices(split)
        assert ds.labels[idx[0]].tolist() == [float(k == pleural) for k in range(14)]
        assert set(np.flatnonzero(ds.labels[idx[1]])) == {hernia, atel}
        # medmnist 3.0.2's order is the CheXNet order, which is ours: the columns carry over unchanged
        np.testing.assert_array_equal(ds.labels[idx], arrays[f"{split}_labels"].astype(np.float32))
    assert ds.labels.dtype == np.float32


def test_labels_are_mapped_by_name_not_position(tmp_path, monkeypatch):
    """A medmnist whose INFO lists the labels in another order: each column still lands on its own finding."""
    shuffled = tuple(np.random.default_rng(3).permutation(cm.MEDMNIST_LABELS).tolist())
    assert shuffled != cm.MEDMNIST_LABELS
    fake_medmnist(monkeypatch, {"label": label_dict(shuffled)})
    arrays = write_npz(tmp_path, size=28, label_names=shuffled)
    ds = ChestMNIST(tmp_path, size=28, download=False)
    assert ds.medmnist_names == shuffled and ds.label_names == LABELS
    idx = ds.split_indices("train")
    assert np.flatnonzero(ds.labels[idx[0]]).tolist() == [LABELS.index("Pleural_Thickening")]
    assert set(np.flatnonzero(ds.labels[idx[1]])) == {LABELS.index("Hernia"), LABELS.index("Atelectasis")}
    for k, label in enumerate(LABELS):
        their = shuffled.index("pleural" if label == "Pleural_Thickening" else label.lower())
        np.testing.assert_array_equal(ds.labels[idx, k], arrays["train_labels"][:, their])


def test_label_name_matching():
    assert cm.our_label("pleural") == "Pleural_Thickening"
    assert cm.our_label("Pleural Thickening") == "Pleural_Thickening"
    assert cm.our_label("pleural_thickening") == "Pleural_Thickening"
    assert cm.our_label("atelectasis") == "Atelectasis"
    assert cm.label_columns(cm.MEDMNIST_LABELS).tolist() == list(range(14))
    with pytest.raises(UserError, match="cannot match"):
        cm.label_columns(cm.MEDMNIST_LABELS[:13] + ("covid",))
    with pytest.raises(UserError, match="one-to-one"):
        cm.label_columns(cm.MEDMNIST_LABELS[:13] + ("mass",))
    with pytest.raises(UserError, match="expected 14"):
        cm.label_columns(cm.MEDMNIST_LABELS[:12])


def test_fallback_labels_match_installed_medmnist():
    pytest.importorskip("medmnist")
    from medmnist.info import INFO

    info = INFO["chestmnist"]
    assert cm.medmnist_label_names(info) == cm.MEDMNIST_LABELS
    assert cm.label_columns(cm.medmnist_label_names(info)).tolist() == list(range(14))
    assert info["n_samples"] == cm.N_SAMPLES
    for size in cm.SIZES:
        flag = "" if size == 28 else f"_{size}"
        assert info[f"url{flag}"].split("?")[0].endswith("/" + cm.file_name(size))


def test_limit_is_per_split_and_seeded(tmp_path, no_medmnist):
    arrays = write_npz(tmp_path, size=28)
    a = ChestMNIST(tmp_path, size=28, download=False, limit=3, seed=1)
    b = ChestMNIST(tmp_path, size=28, download=False, limit=3, seed=1)
    assert len(a) == 9 and a.names.tolist() == b.names.tolist()
    assert all(len(a.split_indices(s)) == 3 for s in COUNTS)
    for i, name in enumerate(a.names):
        split, row = name.rsplit("_", 1)
        np.testing.assert_array_equal(a.read_source(i), arrays[f"{split}_images"][int(row)])
        np.testing.assert_array_equal(a.labels[i], arrays[f"{split}_labels"][int(row)])
    assert a.fingerprint() != ChestMNIST(tmp_path, size=28, download=False, limit=3, seed=2).fingerprint()


@pytest.mark.parametrize("size", [32, 0, True, "64", None])
def test_bad_size(tmp_path, size):
    with pytest.raises(UserError, match="28, 64, 128, 224") as err:
        ChestMNIST(tmp_path, size=size, download=False)
    assert "\n" not in str(err.value)


def test_missing_file_without_download(tmp_path):
    with pytest.raises(UserError, match="chestmnist_64.npz not found and download is off") as err:
        ChestMNIST(tmp_path, size=64, download=False)
    assert str(tmp_path) in str(err.value)


def test_default_root_is_medmnist_folder(tmp_path, no_medmnist):
    assert cm.default_root() == tmp_path / "home" / ".medmnist"
    write_npz(tmp_path / "home" / ".medmnist", size=28)
    assert len(ChestMNIST(size=28, download=False)) == 22


@pytest.mark.parametrize("drop", [("val_images",), ("train_labels", "test_labels")])
def test_missing_keys(tmp_path, drop):
    write_npz(tmp_path, size=28, drop=drop)
    with pytest.raises(UserError, match="lacks " + ", ".join(drop)) as err:
        ChestMNIST(tmp_path, size=28, download=False)
    assert "chestmnist.npz" in str(err.value)


def test_bad_contents(tmp_path, no_medmnist):
    write_npz(tmp_path, size=28, name="chestmnist_64.npz")  # 28 px arrays in the 64 px file
    with pytest.raises(UserError, match=r"train_images is uint8 \(12, 28, 28\), expected uint8 \(12, 64, 64\)"):
        ChestMNIST(tmp_path, size=64, download=False)
    arrays = write_npz(tmp_path, size=28)
    arrays["val_labels"][2, 3] = 2
    np.savez(tmp_path / "chestmnist.npz", **arrays)
    with pytest.raises(UserError, match="val_labels has values other than 0 and 1"):
        ChestMNIST(tmp_path, size=28, download=False)
    arrays = write_npz(tmp_path, size=28)
    arrays["test_images"] = arrays["test_images"][:5]
    np.savez(tmp_path / "chestmnist.npz", **arrays)
    with pytest.raises(UserError, match="5 images like test_labels|expected uint8 \\(6, 28, 28\\)"):
        ChestMNIST(tmp_path, size=28, download=False)
    arrays = write_npz(tmp_path, size=28)
    arrays["train_labels"] = np.array([{"a": 1}] * 12, dtype=object)
    np.savez(tmp_path / "chestmnist.npz", **arrays)  # an object array: stored as a pickle, never loaded
    with pytest.raises(UserError, match="train_labels is object"):
        ChestMNIST(tmp_path, size=28, download=False)


def test_truncated_or_foreign_file(tmp_path, no_medmnist):
    write_npz(tmp_path, size=28)
    path = tmp_path / "chestmnist.npz"
    path.write_bytes(path.read_bytes()[:2000])  # an interrupted download
    with pytest.raises(UserError, match="not a readable .npz") as err:
        ChestMNIST(tmp_path, size=28, download=False)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    np.save(tmp_path / "x.npy", np.zeros(3))
    (tmp_path / "x.npy").replace(path)
    with pytest.raises(UserError, match="single .npy array"):
        ChestMNIST(tmp_path, size=28, download=False)


def test_registry_builds_it_by_name(tmp_path, no_medmnist):
    write_npz(tmp_path, size=28)
    ds = create_dataset("chestmnist", root=str(tmp_path), size=28, download=False, limit=2)
    assert isinstance(ds, ChestMNIST) and ds.name == "chestmnist" and len(ds) == 6


def test_cli_data_check(tmp_path, capsys, no_medmnist):
    write_npz(tmp_path, size=28)
    code = main(["data", "check", "--dataset", "chestmnist", "--data-root", str(tmp_path), "--data-option",
                 "size=28", "--workers", "0"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "dataset chestmnist: 22 images" in out and "patient overlap between splits: unknown (no patient ids" in out
    assert "train        12        12" in out and "val           4         4" in out and "28x28 (22)" in out
    code = main(["data", "check", "--set", "dataset.name=chestmnist", "--set", f"dataset.root={tmp_path}",
                 "--set", "dataset.options.size=28", "--set", "dataset.options.download=false", "--json",
                 "--workers", "0"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["corrupt"] == [] and report["source_sizes"] == {"28x28": 22}
    assert {s: report["splits"][s]["images"] for s in COUNTS} == COUNTS
    assert report["splits"]["test"]["positives"]["Pleural_Thickening"] >= 1


def test_cli_missing_medmnist_says_how_to_install(tmp_path, capsys, no_medmnist):
    code = main(["data", "check", "--dataset", "chestmnist", "--data-root", str(tmp_path / "none"), "--workers", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "pip install 'medbackdoor[medmnist]'" in err and len(err.strip().splitlines()) == 1


def test_no_medmnist_no_file(tmp_path, no_medmnist):
    with pytest.raises(UserError) as err:
        ChestMNIST(tmp_path, size=128)
    text = str(err.value)
    assert text.startswith(cm.INSTALL_HINT) and "chestmnist_128.npz" in text and str(tmp_path) in text
    # the labels still map without medmnist (the built-in copy of its names)
    write_npz(tmp_path, size=28)
    assert ChestMNIST(tmp_path, size=28).medmnist_names == cm.MEDMNIST_LABELS


def test_download_uses_medmnist_url_and_md5(tmp_path, monkeypatch, serve):
    folder, base = serve
    arrays = write_npz(folder, size=64)
    blob = (folder / "chestmnist_64.npz").read_bytes()
    fake_medmnist(monkeypatch, {"label": label_dict(cm.MEDMNIST_LABELS),
                                "url_64": f"{base}/chestmnist_64.npz?download=1",
                                "MD5_64": hashlib.md5(blob).hexdigest()})
    root = tmp_path / "mm"
    ds = ChestMNIST(root, size=64)
    assert (root / "chestmnist_64.npz").read_bytes() == blob
    assert sorted(p.name for p in root.iterdir()) == ["chestmnist_64.npz"]  # no temporary left behind
    np.testing.assert_array_equal(ds.read_source(0), arrays["train_images"][0])


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_download_failures_are_one_line(tmp_path, monkeypatch, serve):
    folder, base = serve
    write_npz(folder, size=28)
    root = tmp_path / "mm"
    cases = [(f"{base}/chestmnist.npz?download=1", "0" * 32),  # wrong MD5
             (f"{base}/missing.npz", None),  # HTTP 404
             (f"http://127.0.0.1:{_closed_port()}/chestmnist.npz", None)]  # offline
    for url, md5 in cases:
        fake_medmnist(monkeypatch, {"label": label_dict(cm.MEDMNIST_LABELS), "url": url, "MD5": md5})
        with pytest.raises(UserError, match="could not download") as err:
            ChestMNIST(root, size=28)
        text = str(err.value)
        assert url in text and f"place it at {root / 'chestmnist.npz'}" in text and "\n" not in text
        assert not list(root.iterdir())  # nothing left that would pass for the dataset next time


def test_pickle_carries_no_pixels_and_unpacks_once(tmp_path, no_medmnist):
    arrays = write_npz(tmp_path / "mm", size=64, counts={"train": 200, "val": 4, "test": 6})
    ds = ChestMNIST(tmp_path / "mm", size=64, download=False)
    ds.read_source(0)
    blob = pickle.dumps(ds)
    assert len(blob) < arrays["train_images"].nbytes / 4
    clone = pickle.loads(blob)
    for i in (0, 150, 205, 209):
        np.testing.assert_array_equal(clone.read_source(i), ds.read_source(i))
    unpacked = sorted((tmp_path / "cache" / "chestmnist").rglob("*.npy"))
    assert len(unpacked) == 3
    stamps = [p.stat().st_mtime_ns for p in unpacked]
    again = ChestMNIST(tmp_path / "mm", size=64, download=False)
    assert [p.stat().st_mtime_ns for p in unpacked] == stamps and again.fingerprint() == ds.fingerprint()


def test_unwritable_unpack_dir(tmp_path, no_medmnist):
    write_npz(tmp_path / "mm", size=28)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(UserError, match="cannot unpack chestmnist.npz into .*dataset.options.unpack_dir") as err:
        ChestMNIST(tmp_path / "mm", size=28, download=False, unpack_dir=blocker / "sub")
    assert "\n" not in str(err.value)
