"""The bundled ``nih-sample`` dataset: the asset file, patient-wise splits, labels against NIH's own rows, the CLI."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medbackdoor.cli import main
from medbackdoor.config import load_config
from medbackdoor.data import DATASETS, NIHSample, create_dataset
from medbackdoor.data import nih_sample as module
from medbackdoor.data.preprocess import read_gray8
from medbackdoor.errors import UserError
from medbackdoor.labels import LABELS, parse_findings
from tests.conftest import SHARED

SOURCES = {"nih1000-64": ("images", 64), "nih-real-sample": ("images_256", 256)}


@pytest.fixture(scope="module")
def asset():
    with np.load(module.asset_path(), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def full():
    return NIHSample()


def test_asset_loads_without_pickle_with_documented_arrays(asset):
    assert {"images", "names", "labels", "patients", "source"} <= set(asset)
    n = len(asset["names"])
    assert n == 1617
    assert asset["images"].dtype == np.uint8 and asset["images"].shape == (n, 64, 64)
    assert asset["labels"].dtype == np.float32 and asset["labels"].shape == (n, len(LABELS))
    assert set(np.unique(asset["labels"]).tolist()) == {0.0, 1.0}
    for key in ("names", "patients", "source"):
        assert asset[key].dtype.kind == "U" and asset[key].shape == (n,)
    assert len(set(asset["names"].tolist())) == n and list(asset["names"]) == sorted(asset["names"])
    assert set(asset["source"].tolist()) == set(SOURCES)
    assert len(set(asset["patients"].tolist())) == 881
    # the patient is the number in the NIH file name
    assert all(int(name[:8]) == int(p) for name, p in zip(asset["names"], asset["patients"]))
    assert module.asset_path().stat().st_size < 8e6


def test_splits_are_patient_disjoint_and_cover_everything(full, asset):
    assert len(full) == len(asset["names"])
    counts = {s: len(full.split_indices(s)) for s in ("train", "val", "test")}
    assert sum(counts.values()) == len(full) and min(counts.values()) > 0
    sets = [set(full.patients[full.splits == s].tolist()) for s in ("train", "val", "test")]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    summary = full.summary()
    assert summary["patient_overlap"] == 0 and summary["dataset"] == "nih-sample"
    assert 0.15 < counts["test"] / len(full) < 0.3 and 0.05 < counts["val"] / len(full) < 0.2
    other = NIHSample(seed=1)
    assert not np.array_equal(other.splits, full.splits) and other.fingerprint() != full.fingerprint()
    np.testing.assert_array_equal(NIHSample().splits, full.splits)


def test_read_source_is_the_stored_64px_gray_image(full, asset):
    for i in (0, 700, len(full) - 1):
        img = full.read_source(i)
        assert img.dtype == np.uint8 and img.shape == (64, 64)
        np.testing.assert_array_equal(img, asset["images"][list(asset["names"]).index(full.names[i])])


def test_limit_keeps_a_seeded_subset_per_split(full):
    small = NIHSample(limit=20)
    assert len(small) == 60 and all(len(small.split_indices(s)) == 20 for s in ("train", "val", "test"))
    assert set(small.names) <= set(full.names)
    np.testing.assert_array_equal(small.names, NIHSample(limit=20).names)
    position = {n: i for i, n in enumerate(full.names)}
    for i in range(0, len(small), 7):
        j = position[small.names[i]]
        assert small.splits[i] == full.splits[j] and small.patients[i] == full.patients[j]
        np.testing.assert_array_equal(small.labels[i], full.labels[j])
        np.testing.assert_array_equal(small.read_source(i), full.read_source(j))
        assert small.source[i] == full.source[j]


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is absent")
def test_labels_and_pixels_match_the_nih_files(full):
    checked = 0
    position = {n: i for i, n in enumerate(full.names)}
    for source, (folder, side) in SOURCES.items():
        root = SHARED / source
        if not (root / "labels.csv").is_file():
            continue
        rows = pd.read_csv(root / "labels.csv", dtype=str)
        # a few per set, plus the names that are in both sets
        pick = pd.concat([rows.iloc[[0, 1, 2, 57, 333, len(rows) - 1]],
                          rows[rows["Image Index"].isin(["00000100_000.png", "00000129_000.png"])]])
        for _, row in pick.iterrows():
            i = position[row["Image Index"]]
            np.testing.assert_array_equal(full.labels[i], parse_findings([row["Finding Labels"]])[0])
            assert full.patients[i] == str(int(row["Patient ID"]))
            if full.source[i] == source:
                pixels = read_gray8(root / folder / row["Image Index"])
                if side != 64:
                    pixels = np.asarray(Image.fromarray(pixels).reduce(side // 64))
                np.testing.assert_array_equal(full.read_source(i), pixels)
            checked += 1
    if not checked:
        pytest.skip("no labels.csv under ../shared/data")


def test_registry_and_config_build_it_by_name():
    assert DATASETS.get("nih-sample") is NIHSample
    assert isinstance(create_dataset("nih-sample", limit=5), NIHSample)
    config = load_config("quick-real")
    assert config.dataset.name == "nih-sample" and config.image_size == 64
    assert config.preprocess.crop == 1.0 and config.preprocess.resize == "area"
    t = config.trigger
    assert (t.kind, t.target, t.fraction, t.mode) == ("square", "Atelectasis", 0.4, "append")
    from medbackdoor.experiment import build_trigger

    # size, location and value left to the square: the paper's 3×3 black centre
    square, _ = build_trigger(config, LABELS)
    assert (square.size, square.location, square.value) == (3, "center", 0.0)
    assert (config.train.epochs, config.train.batch_size, config.train.lr) == (6, 32, 0.001)
    from medbackdoor.experiment import build_dataset

    ds = build_dataset(load_config("quick-real", ["dataset.options.limit=8"]))
    assert isinstance(ds, NIHSample) and len(ds) == 24


def test_data_check_cli(capsys):
    code = main(["data", "check", "--config", "quick-real", "--workers", "0", "--json"])
    out = capsys.readouterr().out
    assert code == 0
    report = json.loads(out)
    assert report["dataset"] == "nih-sample" and report["images"] == 1617
    assert report["patient_overlap"] == 0 and report["corrupt"] == [] and report["source_sizes"] == {"64x64": 1617}
    assert main(["data", "check", "--config", "quick-real", "--workers", "0", "--limit", "10"]) == 0
    assert "dataset nih-sample: 30 images" in capsys.readouterr().out


def _broken(tmp_path, kind):
    path = tmp_path / "nih_sample.npz"
    if kind == "truncated":
        path.write_bytes(module.asset_path().read_bytes()[:5000])
    elif kind == "garbage":
        path.write_bytes(b"not a zip file at all")
    elif kind == "pickled":
        np.savez(path, images=np.zeros((1, 64, 64), np.uint8), names=np.array(["a.png"], dtype=object),
                 labels=np.zeros((1, 14), np.float32), patients=np.array(["1"]), source=np.array(["x"]))
    elif kind == "wrong-shape":
        np.savez(path, images=np.zeros((1, 32, 32), np.uint8), names=np.array(["a.png"]),
                 labels=np.zeros((1, 14), np.float32), patients=np.array(["1"]), source=np.array(["x"]))
    elif kind == "no-labels":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("names.npy", b"")
    return path


@pytest.mark.parametrize("kind", ["missing", "truncated", "garbage", "pickled", "wrong-shape", "no-labels"])
def test_bad_asset_is_one_clear_error(tmp_path, monkeypatch, capsys, kind):
    path = _broken(tmp_path, kind)
    with pytest.raises(UserError, match="nih-sample asset") as info:
        module.load_asset(path)
    assert "\n" not in str(info.value)
    monkeypatch.setattr(module, "asset_path", lambda: path)
    with pytest.raises(UserError):
        NIHSample()
    assert main(["data", "check", "--config", "quick-real", "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert "nih-sample asset" in err and len(err.strip().splitlines()) == 1


def test_unknown_dataset_option_is_one_line(tmp_path, capsys):
    from medbackdoor.cli import main

    assert main(["run", "--config", "quick-real", "--set", "dataset.options.size=3", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "no option 'size'" in err and "Traceback" not in err and not (tmp_path / "r").exists()
