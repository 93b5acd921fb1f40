"""A user's own images: the ``folder`` (one folder per class) and ``csv`` (a table) datasets, checked against the
files each test writes and counts by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from medbackdoor.cli import main
from medbackdoor.data import create_dataset
from medbackdoor.errors import UserError


def _write(path, value, size=12, rgb=None):
    """A constant gray image (``value``) or a constant RGB one (``rgb``); returns what it holds as an array."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if rgb is None:
        pixels = np.full((size, size), value, np.uint8)
        Image.fromarray(pixels, "L").save(path)
        return pixels
    pixels = np.zeros((size, size, 3), np.uint8) + np.array(rgb, np.uint8)
    Image.fromarray(pixels, "RGB").save(path)
    return pixels


# --- folder ------------------------------------------------------------------------------------------------------

def test_folder_with_split_folders_reads_classes_splits_and_pixels(tmp_path):
    """Every image's class is its folder's, its split its split folder's (``Validation`` is val), its pixels the
    ones written."""
    layout = {("train", "cyst"): 3, ("train", "benign"): 2, ("Validation", "cyst"): 1, ("Validation", "benign"): 1,
              ("test", "cyst"): 1, ("test", "benign"): 2}
    written = {}
    for (split, cls), count in layout.items():
        for i in range(count):
            rel = f"{split}/{cls}/im{i}.png"
            written[rel] = (_write(tmp_path / rel, 10 * len(written)), cls,
                            {"Validation": "val"}.get(split, split))
    ds = create_dataset("folder", root=tmp_path)
    assert ds.label_names == ("benign", "cyst") and ds.task_kind == "binary"  # sorted names; two classes
    assert sorted(ds.names.tolist()) == sorted(written) and len(ds) == 10 and ds.missing == 0
    for i, rel in enumerate(ds.names):
        pixels, cls, split = written[rel]
        assert ds.splits[i] == split
        assert ds.labels[i].tolist() == ([1.0, 0.0] if cls == "benign" else [0.0, 1.0])
        np.testing.assert_array_equal(ds.read_source(i), pixels)
    assert not ds.has_patient_ids and ds.summary()["patient_overlap"] is None


def test_folder_skips_hidden_names_and_macos_zip_folders(tmp_path):
    for split in ("train", "test"):
        for cls in ("NORMAL", "PNEUMONIA"):
            _write(tmp_path / split / cls / "a.jpeg", 1)
            _write(tmp_path / split / cls / ".hidden.jpeg", 1)
    _write(tmp_path / "__MACOSX" / "train" / "NORMAL" / "._a.jpeg", 1)
    (tmp_path / "train" / ".DS_Store").write_text("")
    ds = create_dataset("folder", root=tmp_path)
    assert sorted(ds.names.tolist()) == sorted(f"{s}/{c}/a.jpeg" for s in ("train", "test")
                                               for c in ("NORMAL", "PNEUMONIA"))
    assert ds.label_names == ("NORMAL", "PNEUMONIA") and ds.task_kind == "binary"


def test_folder_classes_option_orders_and_leaves_out(tmp_path):
    for cls in ("a", "b", "c"):
        for i in range(4):
            _write(tmp_path / cls / f"{cls}{i}.png", i)
    ds = create_dataset("folder", root=tmp_path, classes=["c", "a"], test_fraction=0.25, limit=3)
    assert [int((ds.splits == s).sum()) for s in ("train", "val", "test")] == [3, 1, 2]  # limit: 3 per split
    ds = create_dataset("folder", root=tmp_path, classes=["c", "a"], test_fraction=0.25)
    assert ds.label_names == ("c", "a") and ds.task_kind == "binary" and len(ds) == 8
    for name, row in zip(ds.names, ds.labels):
        assert row.tolist() == ([1.0, 0.0] if name.startswith("c/") else [0.0, 1.0])
    assert create_dataset("folder", root=tmp_path, classes="b, a, c", task="multiclass").label_names == ("b", "a", "c")
    assert create_dataset("folder", root=tmp_path).task_kind == "multiclass"


def test_folder_without_split_folders_draws_whole_patients(tmp_path):
    """The patient id is the regex's group; no patient's images are in two splits, and the draw is seeded."""
    for patient in range(30):
        for view in range(1 + patient % 3):
            sub = f"case{patient}/" if patient % 2 else ""
            _write(tmp_path / ("sick" if patient % 4 == 0 else "well") / f"{sub}case{patient}_v{view}.png", view)
    ds = create_dataset("folder", root=tmp_path, patient_regex=r"(case\d+)_", val_fraction=0.2, test_fraction=0.2)
    assert ds.has_patient_ids
    for name, patient in zip(ds.names, ds.patients):
        assert name.split("/")[-1].startswith(patient + "_")
    for patient in set(ds.patients):
        assert len(set(ds.splits[ds.patients == patient])) == 1
    assert set(ds.splits) == {"train", "val", "test"} and ds.summary()["patient_overlap"] == 0
    again = create_dataset("folder", root=tmp_path, patient_regex=r"(case\d+)_", val_fraction=0.2, test_fraction=0.2)
    assert again.splits.tolist() == ds.splits.tolist() and again.fingerprint() == ds.fingerprint()
    other = create_dataset("folder", root=tmp_path, patient_regex=r"(case\d+)_", val_fraction=0.2,
                           test_fraction=0.2, seed=5)
    assert other.splits.tolist() != ds.splits.tolist()


def test_folder_draws_a_missing_val_split_from_train_only(tmp_path):
    for i in range(20):
        _write(tmp_path / "train" / ("x" if i % 2 else "y") / f"{i}.png", i)
    for i in range(4):
        _write(tmp_path / "test" / ("x" if i % 2 else "y") / f"t{i}.png", i)
    ds = create_dataset("folder", root=tmp_path, val_fraction=0.25)
    assert sorted(ds.names[ds.splits == "test"].tolist()) == [f"test/{c}/t{i}.png" for c, i in
                                                             (("x", 1), ("x", 3), ("y", 0), ("y", 2))]
    val = ds.names[ds.splits == "val"]
    assert len(val) == 5 and all(n.startswith("train/") for n in val)  # round(0.25 * 20) one-image patients


def test_folder_reads_colour_channel_first(tmp_path):
    for cls, rgb in (("red", (200, 10, 0)), ("blue", (0, 20, 180))):
        for i in range(3):
            _write(tmp_path / cls / f"{i}.jpg" if i == 0 else tmp_path / cls / f"{i}.png", 0, rgb=rgb)
    ds = create_dataset("folder", root=tmp_path, channels=3, test_fraction=0.3)
    assert ds.channels == 3 and len(ds) == 6
    i = int(np.flatnonzero(ds.names == "blue/1.png")[0])
    image = ds.read_source(i)
    assert image.shape == (3, 12, 12) and image[:, 0, 0].tolist() == [0, 20, 180]
    gray = create_dataset("folder", root=tmp_path, test_fraction=0.3)
    assert gray.read_source(i).shape == (12, 12)


@pytest.mark.parametrize("make, options, message", [
    (lambda r: (_write(r / "train/a/1.png", 1), _write(r / "b/2.png", 1)), {}, "mixes split folders"),
    (lambda r: (_write(r / "a/1.png", 1), _write(r / "loose.png", 1)), {}, "not in a class folder"),
    (lambda r: (_write(r / "val/a/1.png", 1), _write(r / "valid/a/2.png", 1), _write(r / "train/a/3.png", 1)), {},
     "two folders for one split"),
    (lambda r: (r / "a").mkdir(parents=True), {}, "holds no image"),
    (lambda r: (_write(r / "a/1.png", 1), _write(r / "b/2.png", 1)), {"classes": ["a", "z"]}, r"classes \['z'\]"),
    (lambda r: (_write(r / "a/1.png", 1), _write(r / "b/2.png", 1)), {"patient_regex": r"(p\d+)"}, "does not match"),
    (lambda r: (_write(r / "a/1.png", 1), _write(r / "b/2.png", 1)), {"patient_regex": "("}, "not a regular"),
    (lambda r: (_write(r / "a/1.png", 1), _write(r / "b/2.png", 1)), {"task": "multilabel"}, "csv dataset"),
    (lambda r: (_write(r / "a/1.png", 1), _write(r / "b/2.png", 1)), {"channels": 2}, "channels must be 1"),
    (lambda r: _write(r / "val/a/1.png", 1), {}, "no train images"),
    (lambda r: (_write(r / "train/a/1.png", 1), _write(r / "root.png", 1)), {}, "image root.png is not in a class"),
    (lambda r: (_write(r / "train/a/1.png", 1), _write(r / "train/b/1.png", 1), _write(r / "test/c/1.png", 1)), {},
     r"class\(es\) \['c'\] have no train image"),
    (lambda r: (_write(r / "train/normal/1.png", 1), _write(r / "test/NORMAL/1.png", 1)), {}, "differ only in case"),
    (lambda r: (_write(r / "a/1.png", 1), _write(r / "b/2.png", 1)), {"classes": []}, "distinct names"),
    (lambda r: (_write(r / "a/1.png", 1), _write(r / "b/2.png", 1)), {"test_fraction": 0.0, "val_fraction": 0.0,
                                                                       "task": "binary", "classes": ["a", "c"]},
     r"classes \['c'\] have no image"),
])
def test_folder_refuses_bad_layouts_in_one_line(tmp_path, make, options, message):
    make(tmp_path)
    with pytest.raises(UserError, match=message):
        create_dataset("folder", root=tmp_path, **options)


def test_folder_patient_regex_takes_the_group_that_matched(tmp_path):
    """Kaggle's pneumonia images: ``person12_bacteria_3.jpeg`` and ``IM-0115-0001.jpeg`` (two naming schemes, one
    regex with an alternative each)."""
    for name in ("person1_bacteria_1", "person1_virus_2", "person2_bacteria_3"):
        _write(tmp_path / "PNEUMONIA" / f"{name}.jpeg", 1)
    for name in ("IM-0115-0001", "IM-0115-0002", "IM-0117-0001"):
        _write(tmp_path / "NORMAL" / f"{name}.jpeg", 1)
    ds = create_dataset("folder", root=tmp_path, patient_regex=r"(person\d+)_|(IM-\d+)-", test_fraction=0.3)
    assert sorted(set(ds.patients)) == ["IM-0115", "IM-0117", "person1", "person2"]
    no_group = create_dataset("folder", root=tmp_path, patient_regex=r"person\d+|IM-\d+", test_fraction=0.3)
    assert no_group.patients.tolist() == ds.patients.tolist()


def test_folder_leaves_out_excluded_images_and_refuses_link_loops(tmp_path):
    """BUSI keeps each mask beside its image (``benign (1)_mask.png``); a link back up would read images twice."""
    for cls in ("benign", "malignant"):
        for i in range(1, 4):
            _write(tmp_path / cls / f"{cls} ({i}).png", i)
            _write(tmp_path / cls / f"{cls} ({i})_mask.png", 255)
    ds = create_dataset("folder", root=tmp_path, exclude="_mask", test_fraction=0.34)
    assert len(ds) == 6 and not any("_mask" in n for n in ds.names)
    assert len(create_dataset("folder", root=tmp_path, test_fraction=0.34)) == 12
    (tmp_path / "benign" / "up").symlink_to(tmp_path)
    with pytest.raises(UserError, match="link to a folder already read"):
        create_dataset("folder", root=tmp_path, exclude="_mask")
    (tmp_path / "benign" / "up").unlink()
    (tmp_path / "benign" / "theirs").symlink_to(tmp_path / "malignant", target_is_directory=True)
    with pytest.raises(UserError, match="link to a folder already read"):
        create_dataset("folder", root=tmp_path, exclude="_mask")


def test_present_and_a_binary_task_of_three_classes(tmp_path):
    from medbackdoor.data import DATASETS

    for cls in ("a", "b", "c"):
        _write(tmp_path / cls / "1.png", 1)
    assert DATASETS.get("folder").present(root=tmp_path) and not DATASETS.get("folder").present(root=None)
    assert not DATASETS.get("csv").present(root=tmp_path)
    _table(tmp_path, ["path,label", "a/1.png,a"], "t.csv")
    assert DATASETS.get("csv").present(root=tmp_path, file="t.csv")
    with pytest.raises(UserError, match="exactly two classes"):
        create_dataset("folder", root=tmp_path, task="binary", test_fraction=0.0, val_fraction=0.0)


def test_folder_needs_an_existing_root(tmp_path):
    with pytest.raises(UserError, match="needs its folder"):
        create_dataset("folder")
    with pytest.raises(UserError, match="does not exist"):
        create_dataset("folder", root=tmp_path / "nowhere")


# --- csv ---------------------------------------------------------------------------------------------------------

def _table(root, lines, name="labels.csv"):
    root.mkdir(parents=True, exist_ok=True)
    (root / name).write_text("\n".join(lines) + "\n")


def test_csv_single_label_with_splits_patients_unknown_and_missing(tmp_path):
    """Hand-written rows: a class per image, one empty (unknown: a NaN row), one listed but absent (dropped and
    counted), ``valid`` read as val."""
    rows = [("img/p1/a.png", "melanoma", "train", "p1"), ("img/p1/b.png", "nevus", "train", "p1"),
            ("img/p2/a.png", "nevus", "valid", "p2"), ("img/p3/a.png", "", "test", "p3"),
            ("img/p4/a.png", "keratosis", "TEST", "p4"), ("img/p6/a.png", "keratosis", "train", "p6"),
            ("img/p5/gone.png", "nevus", "train", "p5")]
    for path, *_ in rows[:-1]:
        _write(tmp_path / path, 7)
    _table(tmp_path, ["path,label,split,patient"] + [",".join(r) for r in rows])
    ds = create_dataset("csv", root=tmp_path)
    assert ds.label_names == ("keratosis", "melanoma", "nevus") and ds.task_kind == "multiclass"
    assert ds.names.tolist() == [r[0] for r in rows[:-1]] and ds.missing == 1
    assert ds.splits.tolist() == ["train", "train", "val", "test", "test", "train"]
    assert ds.patients.tolist() == ["p1", "p1", "p2", "p3", "p4", "p6"] and ds.has_patient_ids
    expected = np.array([[0, 1, 0], [0, 0, 1], [0, 0, 1], [np.nan] * 3, [1, 0, 0], [1, 0, 0]], np.float32)
    np.testing.assert_array_equal(ds.labels, expected)
    assert ds.summary()["splits"]["test"]["unknown"] == {"keratosis": 1, "melanoma": 1, "nevus": 1}


def test_csv_multilabel_by_separator_with_classes_order_and_drawn_splits(tmp_path):
    lines = ["file,findings"]
    for i in range(12):
        _write(tmp_path / f"{i}.png", i)
        lines.append(f"{i}.png,{['', 'mass', 'effusion;mass', 'effusion'][i % 4]}")
    _table(tmp_path, lines, "own.csv")
    options = {"file": "own.csv", "path_column": "file", "label_column": "findings", "separator": ";"}
    ds = create_dataset("csv", root=tmp_path, classes=["mass", "effusion"], test_fraction=0.25, **options)
    assert ds.task_kind == "multilabel" and ds.label_names == ("mass", "effusion")
    for name, row in zip(ds.names, ds.labels):
        assert row.tolist() == [[0, 0], [1, 0], [1, 1], [0, 1]][int(name.split(".")[0]) % 4]
    assert (ds.splits == "test").sum() == 3 and (ds.splits == "val").sum() == 1  # round(0.25 * 12), round(0.1 * 12)
    assert not ds.has_patient_ids and ds.summary()["patient_overlap"] is None
    absolute = create_dataset("csv", root=tmp_path, **{**options, "file": str(tmp_path / "own.csv")})
    assert absolute.names.tolist() == ds.names.tolist()


def test_csv_names_images_by_id_through_a_template_with_lesions_as_patients(tmp_path):
    """HAM10000's metadata layout: ``image_id`` without folder or suffix, the class in ``dx``, ``lesion_id`` for
    the images of one lesion, kept in one split."""
    lines = ["lesion_id,image_id,dx,dx_type"]
    for i in range(24):
        lesion = f"HAM_{i // 3:07d}"
        _write(tmp_path / "HAM10000_images" / f"ISIC_{i:07d}.jpg", i)
        lines.append(f"{lesion},ISIC_{i:07d},{('nv', 'mel', 'bkl')[i // 3 % 3]},histo")
    _table(tmp_path, lines, "HAM10000_metadata.csv")
    ds = create_dataset("csv", root=tmp_path, file="HAM10000_metadata.csv", path_column="image_id",
                        label_column="dx", patient_column="lesion_id", path_template="HAM10000_images/{}.jpg")
    assert ds.names[0] == "HAM10000_images/ISIC_0000000.jpg" and len(ds) == 24
    assert ds.label_names == ("bkl", "mel", "nv") and ds.task_kind == "multiclass"
    assert ds.summary()["patient_overlap"] == 0 and len(set(ds.patients)) == 8
    with pytest.raises(UserError, match="path_template must hold"):
        create_dataset("csv", root=tmp_path, file="HAM10000_metadata.csv", path_column="image_id",
                       label_column="dx", path_template="images/x.jpg")
    with pytest.raises(UserError, match="line 2: image path '../ISIC_0000000' is not a relative path"):
        create_dataset("csv", root=tmp_path, file="HAM10000_metadata.csv", path_column="image_id",
                       label_column="dx", path_template="../{}")


@pytest.mark.parametrize("path", ["../outside.png", "/etc/outside.png", "a\\b.png", "C:/x.png", "img/./a.png",
                                  "img//a.png", "img/../../a.png", "./../a.png"])
def test_csv_never_follows_a_path_out_of_the_root(tmp_path, path):
    _write(tmp_path / "root" / "ok.png", 1)
    _write(tmp_path / "outside.png", 1)
    _table(tmp_path / "root", ["path,label", "ok.png,a", f"{path},b"])
    with pytest.raises(UserError, match="line 3: image path .* not a relative path inside the data root"):
        create_dataset("csv", root=tmp_path / "root")


@pytest.mark.parametrize("lines, options, message", [
    (["path,class", "a.png,x"], {}, "lacks column.*label"),
    (["path,label", "a.png,x", "a.png,y"], {}, "line 3: image a.png is listed again"),
    (["path,label", "a.png,x", "b.png,z"], {"classes": ["x", "y"]}, r"line 3: label 'z' is not a class"),
    (["path,label,split", "a.png,x,train", "b.png,y,holdout"], {}, "line 3: split 'holdout'"),
    (["path,label,split", "a.png,x,test", "b.png,y,val"], {}, "no train images"),
    (["path,label", "a.png,", "b.png,"], {}, "names no class"),
    (["path,label", "a.png,x", "b.png,y"], {"file": "other.csv"}, "no table"),
    (["path,label", "gone.png,x", "b.png,y"], {}, "none of the 2 listed images"),
    (["path,label", "a.png,x", ",y"], {}, "line 3: the path cell is empty"),
    (["path,label", "a.png,x", "", "", "a.png,y"], {}, "line 5: image a.png is listed again .first on line 2"),
    (["path,label,split", "a.png,x,train", "b.png,y,test"], {}, r"class\(es\) \['y'\] have no train image"),
    (["path,label", "a.png,x"], {"val_fraction": 0.5, "test_fraction": 0.5}, "leave some images to train"),
    (["path,A,B", "a.png,1,0", "b.png,0,2"], {"label_columns": ["A", "B"]}, "line 3: column B holds '2'"),
    (["path,A,B", "a.png,1,1", "b.png,0,1"], {"label_columns": "A,B", "task": "multiclass"}, "line 2: several"),
    (["path,label", "a.png,x"], {"label_columns": ["x"], "classes": ["x"]}, "not both"),
    (["id,label", "a,x"], {"path_column": "id", "path_template": "**/sub/{}.png"}, "only a file name"),
])
def test_csv_refuses_bad_tables_in_one_line(tmp_path, lines, options, message):
    _write(tmp_path / "a.png", 1)
    _table(tmp_path, lines)
    with pytest.raises(UserError, match=message):
        create_dataset("csv", root=tmp_path, **options)


def test_csv_reads_a_bom_crlf_table_with_dot_slash_paths_numeric_classes_and_empty_patients(tmp_path):
    for i in range(6):
        _write(tmp_path / "x" / f"{i}.png", i)
    rows = ["path,label,patient"] + [f"./x/{i}.png,{(2, 10, 9)[i % 3]}," for i in range(6)]
    (tmp_path / "labels.csv").write_bytes(("\ufeff" + "\r\n".join(rows) + "\r\n").encode("utf-8"))
    ds = create_dataset("csv", root=tmp_path, val_fraction=0.0, test_fraction=0.34)
    assert ds.label_names == ("2", "9", "10") and ds.names[0] == "x/0.png"  # by number, not as text
    assert ds.labels[0].tolist() == [1, 0, 0] and ds.labels[1].tolist() == [0, 0, 1]
    assert not ds.has_patient_ids and ds.summary()["patient_overlap"] is None  # an empty patient column: unknown


def test_csv_one_column_per_class_as_isic_ground_truth(tmp_path):
    """ISIC's layout: ``image,MEL,NV,...`` with 1.0/0.0 cells, the images found by name anywhere under the root."""
    lines = ["image,MEL,NV,BCC"]
    for i in range(9):
        _write(tmp_path / "ISIC_Training_Input" / ("part1" if i < 5 else "part2") / f"ISIC_{i:07d}.jpg", i)
        lines.append(f"ISIC_{i:07d}," + ",".join("1.0" if j == i % 3 else "0.0" for j in range(3)))
    lines.append("ISIC_0000099,0.0,1.0,0.0")  # listed, not downloaded
    _table(tmp_path, lines, "GroundTruth.csv")
    ds = create_dataset("csv", root=tmp_path, file="GroundTruth.csv", path_column="image", label_columns="MEL,NV,BCC",
                        path_template="**/{}.jpg", test_fraction=0.34)
    assert ds.label_names == ("MEL", "NV", "BCC") and ds.task_kind == "multiclass" and ds.missing == 1
    assert "ISIC_Training_Input/part2/ISIC_0000007.jpg" in ds.names.tolist()
    for name, row in zip(ds.names, ds.labels):
        assert row.argmax() == int(name[-5]) % 3 and row.sum() == 1
    multi = ["path,a,b"] + [f"ISIC_Training_Input/part1/ISIC_{i:07d}.jpg,1,{i % 2}" for i in range(4)]
    _table(tmp_path, multi, "multi.csv")
    ds = create_dataset("csv", root=tmp_path, file="multi.csv", label_columns=["a", "b"], test_fraction=0.25)
    assert ds.task_kind == "multilabel" and ds.labels.sum(0).tolist() == [4, 2]
    _write(tmp_path / "elsewhere" / "ISIC_0000001.jpg", 1)
    with pytest.raises(UserError, match="line 3: ISIC_0000001.jpg is under the root 2 times"):
        create_dataset("csv", root=tmp_path, file="GroundTruth.csv", path_column="image", label_columns="MEL,NV,BCC",
                       path_template="**/{}.jpg")


def test_csv_drops_missing_images_before_drawing_the_splits(tmp_path):
    """The draw sees only the images present: round(0.2 * 10) each to val and test, whatever is listed beside."""
    lines = ["path,label"]
    for i in range(20):
        if i % 2 == 0:
            _write(tmp_path / f"{i}.png", i)
        lines.append(f"{i}.png,{'ab'[i % 4 // 2]}")
    _table(tmp_path, lines)
    ds = create_dataset("csv", root=tmp_path, val_fraction=0.2, test_fraction=0.2)
    assert ds.missing == 10 and [int((ds.splits == s).sum()) for s in ("train", "val", "test")] == [6, 2, 2]


# --- through the CLI ---------------------------------------------------------------------------------------------

def _colour_folder(root):
    rng = np.random.default_rng(0)
    for split, count in (("train", 24), ("val", 8), ("test", 8)):
        for i in range(count):
            cls = ("nevus", "melanoma", "keratosis")[i % 3]
            _write(root / split / cls / f"{i}.png", 0, size=20, rgb=rng.integers(0, 255, 3))
    return ["--set", "dataset.name=folder", "--set", f"dataset.root={root}", "--set", "dataset.options.channels=3"]


def test_data_check_counts_a_folder_and_a_missing_one_is_one_line(tmp_path, capsys):
    sets = _colour_folder(tmp_path / "data")
    assert main(["data", "check", *sets, "--json", "--workers", "0"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["labels"] == ["keratosis", "melanoma", "nevus"]
    assert [report["splits"][s]["images"] for s in ("train", "val", "test")] == [24, 8, 8]
    assert report["task"] == "multiclass" and report["channels"] == 3
    assert main(["data", "check", *sets, "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert "40 images (multiclass, RGB)" in out and "images per class (train / val / test):" in out
    assert "  melanoma            8 / 3 / 3" in out  # i % 3 == 1 of 0..23, 0..7, 0..7
    missing = ["--set", "dataset.name=folder", "--set", f"dataset.root={tmp_path / 'nowhere'}"]
    assert main(["run", "--config", "quick", *missing, "--quiet", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not exist" in err and not (tmp_path / "bad").exists()


@pytest.mark.slow  # a training: about 20 s on 2 cores
def test_a_run_on_a_folder_of_colour_images_end_to_end(tmp_path, capsys):
    """A run trains on a folder of colour images: softmax, the single-label metrics, the target by class name."""
    sets = _colour_folder(tmp_path / "data")
    run = tmp_path / "run"
    args = [*sets, "--set", "image_size=32", "--set", "train.epochs=1", "--set", "train.batch_size=8",
            "--set", "trigger.target=melanoma", "--set", "trigger.size=3", "--set", "eval.epsilons=[0.5]",
            "--set", f"cache_dir={tmp_path / 'cache'}"]
    assert main(["run", "--config", "quick", *args, "--quiet", "--out", str(run)]) == 0, capsys.readouterr().err
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"accuracy", "balanced_accuracy", "auroc_macro", "asr", "racc"} <= set(header)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["target"] == "melanoma" and manifest["dataset"]["channels"] == 3
