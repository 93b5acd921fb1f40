"""The CheXpert adapter on miniature releases written on the fly (the real layout, tiny JPEG/PNG images)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medbackdoor.cli import main
from medbackdoor.data import CheXpert, create_dataset
from medbackdoor.data.chexpert import COMPETITION, OBSERVATIONS
from medbackdoor.errors import UserError

RELEASE = "CheXpert-v1.0-small"
HEADER = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *OBSERVATIONS]
VALUES = ("1.0", "0.0", "-1.0", "")


def _image(path: Path, i: int, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(i).integers(0, 256, size=(size, size), dtype=np.uint8)
    if i % 3 == 1:
        img = Image.fromarray(np.stack([pixels] * 3, -1), "RGB")
    else:
        img = Image.fromarray(pixels, "L")
    img.save(path, format="PNG" if path.suffix == ".png" else "JPEG")


def make_chexpert(base: Path, n_train: int = 12, n_valid: int = 3, size: int = 48, seed: int = 0,
                  test_csv: str | None = None) -> dict:
    """Write ``base/CheXpert-v1.0-small/`` with train.csv, valid.csv (and a test CSV) and the images.

    Every patient has a frontal view; every other one also a lateral view; patient 3 a second study. The labels
    are drawn from 1.0, 0.0, -1.0 and blank. Returns the release folder and {relative path: (view, raw values)}.
    """
    rng = np.random.default_rng(seed)
    root = base / RELEASE
    rows: dict[str, dict] = {}
    counter = 0

    def add(split: str, patient: int, study: int, view: int, kind: str, writer, ext: str = "jpg") -> None:
        nonlocal counter
        rel = f"{split}/patient{patient:05d}/study{study}/view{view}_{kind}.{ext}"
        raw = [str(v) for v in rng.choice(VALUES, size=len(OBSERVATIONS))]
        writer.writerow([f"{RELEASE}/{rel}", "Female", 50, kind.capitalize(), "AP" if kind == "frontal" else "",
                         *raw])
        rows[rel] = {"view": kind, "raw": raw, "split": split}
        _image(root / rel, counter, size)
        counter += 1

    root.mkdir(parents=True)
    for name, split, first, n in (("train.csv", "train", 1, n_train), ("valid.csv", "valid", 64541, n_valid)):
        with open(root / name, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(HEADER)
            for p in range(first, first + n):
                add(split, p, 1, 1, "frontal", w, ext="png" if p == first + 1 else "jpg")
                if p % 2 == 0:
                    add(split, p, 1, 2, "lateral", w)
                if p == 3:
                    add(split, p, 2, 1, "frontal", w)
    if test_csv:  # the later release's test labels: no Sex/Age/view columns, paths without the release prefix
        with open(root / test_csv, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["Path", *OBSERVATIONS])
            for p in range(64741, 64745):
                rel = f"test/patient{p:05d}/study1/view1_frontal.jpg"
                raw = [str(v) for v in rng.choice(("1.0", "0.0"), size=len(OBSERVATIONS))]
                w.writerow([rel, *raw])
                rows[rel] = {"view": "frontal", "raw": raw, "split": "test"}
                _image(root / rel, counter, size)
                counter += 1
    return {"root": root, "rows": rows}


def expected(raw: list[str], uncertain: str = "zeros", blank: str = "zeros") -> np.ndarray:
    table = {"1.0": 1.0, "0.0": 0.0, "-1.0": {"zeros": 0.0, "ones": 1.0, "ignore": np.nan}[uncertain],
             "": {"zeros": 0.0, "ignore": np.nan}[blank]}
    return np.array([table[v] for v in raw], np.float32)


def append_row(csv_path: Path, path: str) -> None:
    with open(csv_path, "a", newline="") as f:
        csv.writer(f).writerow([path, "Male", 30, "Frontal", "PA", *(["0.0"] * len(OBSERVATIONS))])


@pytest.fixture
def chexpert(tmp_path: Path) -> dict:
    return make_chexpert(tmp_path)


def test_layout_label_names_and_parent_root(chexpert, tmp_path):
    ds = create_dataset("chexpert", root=chexpert["root"])
    assert isinstance(ds, CheXpert) and ds.label_names == OBSERVATIONS and ds.labels.shape == (len(ds), 14)
    assert "Pleural Effusion" in ds.label_names and "Atelectasis" in ds.label_names
    assert ds.missing == 0 and ds.summary()["patient_overlap"] == 0
    frontal = [r for r, v in chexpert["rows"].items() if v["view"] == "frontal"]
    assert sorted(ds.names.tolist()) == sorted(frontal)
    parent = CheXpert(tmp_path)  # the folder holding CheXpert-v1.0-small/
    assert parent.root == ds.root and parent.fingerprint() == ds.fingerprint()
    assert all(p.startswith("patient") for p in ds.patients)
    for i in range(len(ds)):
        img = ds.read_source(i)
        assert img.dtype == np.uint8 and img.shape == (48, 48)


@pytest.mark.parametrize("uncertain", ["zeros", "ones", "ignore"])
@pytest.mark.parametrize("blank", ["zeros", "ignore"])
def test_uncertainty_and_blank_policies(chexpert, uncertain, blank):
    ds = CheXpert(chexpert["root"], uncertain=uncertain, blank=blank, view="all")
    for name, row in zip(ds.names, ds.labels):
        np.testing.assert_array_equal(row, expected(chexpert["rows"][name]["raw"], uncertain, blank))
    assert np.isnan(ds.labels).any() == (uncertain == "ignore" or blank == "ignore")
    summary = ds.summary()["splits"]["train"]
    assert set(summary["unknown"]) == set(OBSERVATIONS)


def test_policies_change_the_fingerprint(chexpert):
    a, b = CheXpert(chexpert["root"]), CheXpert(chexpert["root"], uncertain="ones")
    assert a.fingerprint() != b.fingerprint()
    assert a.fingerprint() == CheXpert(chexpert["root"]).fingerprint()


def test_view_filter(chexpert):
    rows = chexpert["rows"]
    counts = {}
    for view in ("frontal", "lateral", "all"):
        ds = CheXpert(chexpert["root"], view=view)
        counts[view] = len(ds)
        kinds = {rows[n]["view"] for n in ds.names}
        assert kinds == ({"frontal", "lateral"} if view == "all" else {view})
    assert counts["all"] == len(rows) == counts["frontal"] + counts["lateral"]
    with pytest.raises(UserError, match="view must be one of"):
        CheXpert(chexpert["root"], view="AP")


def test_train_val_split_is_patient_wise_seeded_and_valid_is_test(tmp_path):
    info = make_chexpert(tmp_path, n_train=40)
    a, b = CheXpert(info["root"], seed=1), CheXpert(info["root"], seed=1)
    np.testing.assert_array_equal(a.splits, b.splits)
    train, val = set(a.patients[a.splits == "train"]), set(a.patients[a.splits == "val"])
    assert val and train and not (train & val)
    assert all(info["rows"][n]["split"] == "train" for n in a.names[a.splits != "test"])
    assert all(info["rows"][n]["split"] == "valid" for n in a.names[a.splits == "test"])
    assert (a.splits == "test").sum() == 3
    wider = CheXpert(info["root"], seed=1, val_fraction=0.4)
    assert (wider.splits == "val").sum() > (a.splits == "val").sum()


@pytest.mark.parametrize("name", ["test_labels.csv", "test.csv"])
def test_test_csv_makes_valid_the_validation_split(tmp_path, name):
    info = make_chexpert(tmp_path, test_csv=name)
    ds = CheXpert(info["root"])
    assert (ds.splits == "test").sum() == 4 and all(n.startswith("test/") for n in ds.names[ds.splits == "test"])
    assert all(n.startswith("valid/") for n in ds.names[ds.splits == "val"]) and (ds.splits == "val").sum() == 3
    assert all(n.startswith("train/") for n in ds.names[ds.splits == "train"])
    for name_, row in zip(ds.names, ds.labels):
        np.testing.assert_array_equal(row, expected(info["rows"][name_]["raw"]))
    assert ds.summary()["patient_overlap"] == 0


def test_labels_subset(chexpert):
    full = CheXpert(chexpert["root"], view="all", uncertain="ignore")
    sub = CheXpert(chexpert["root"], view="all", uncertain="ignore", labels=list(COMPETITION))
    assert sub.label_names == COMPETITION and sub.labels.shape == (len(full), 5)
    cols = [OBSERVATIONS.index(n) for n in COMPETITION]
    np.testing.assert_array_equal(sub.labels, full.labels[:, cols])
    assert CheXpert(chexpert["root"], labels="competition").label_names == COMPETITION
    lower = CheXpert(chexpert["root"], labels=["pleural effusion", "Edema"])
    assert lower.label_names == ("Pleural Effusion", "Edema")
    assert CheXpert(chexpert["root"], labels="Edema, Atelectasis").label_names == ("Edema", "Atelectasis")
    with pytest.raises(UserError, match="unknown observation 'Effusion'.*Pleural Effusion"):
        CheXpert(chexpert["root"], labels=["Effusion"])
    with pytest.raises(UserError, match="twice"):
        CheXpert(chexpert["root"], labels=["Edema", "edema"])


def test_limit(tmp_path):
    info = make_chexpert(tmp_path, n_train=30)
    ds = CheXpert(info["root"], limit=2)
    assert all((ds.splits == s).sum() <= 2 for s in ("train", "val", "test")) and len(ds) == 6
    np.testing.assert_array_equal(ds.names, CheXpert(info["root"], limit=2).names)


def test_missing_images_are_counted_and_all_missing_fails(chexpert):
    frontal = [r for r, v in chexpert["rows"].items() if v["view"] == "frontal" and v["split"] == "train"]
    for rel in frontal[:2]:
        (chexpert["root"] / rel).unlink()
    full = len(frontal) + sum(v["view"] == "frontal" and v["split"] == "valid" for v in chexpert["rows"].values())
    ds = CheXpert(chexpert["root"])
    assert ds.missing == 2 and len(ds) == full - 2 and not set(frontal[:2]) & set(ds.names)
    for rel in chexpert["rows"]:
        (chexpert["root"] / rel).unlink(missing_ok=True)
    with pytest.raises(UserError, match="none of the .* listed images"):
        CheXpert(chexpert["root"])


@pytest.mark.parametrize("bad", ["../../etc/passwd", "/etc/passwd", f"{RELEASE}/../../secret.jpg",
                                 "train/patient00001/../../../x.jpg", "train\\patient00001\\view1_frontal.jpg",
                                 "C:/x/patient00001/view1_frontal.jpg", RELEASE])
def test_paths_that_escape_the_root_are_refused(chexpert, bad):
    append_row(chexpert["root"] / "train.csv", bad)
    lines = (chexpert["root"] / "train.csv").read_text().splitlines()
    with pytest.raises(UserError, match=f"train.csv line {len(lines)}: image path") as err:
        CheXpert(chexpert["root"], view="all")
    assert "\n" not in str(err.value)


def test_bad_csv_is_a_one_line_error(chexpert):
    path = chexpert["root"] / "valid.csv"
    text = path.read_text().replace(",Edema,", ",Oedema,", 1)
    path.write_text(text)
    with pytest.raises(UserError, match=r"^valid.csv lacks column\(s\) Edema$"):
        CheXpert(chexpert["root"])
    assert CheXpert(chexpert["root"], labels=["Atelectasis"]).label_names == ("Atelectasis",)
    train = chexpert["root"] / "train.csv"
    train.write_text(train.read_text().replace("Path,", "File,", 1))
    with pytest.raises(UserError, match=r"^train.csv lacks column\(s\) Path$"):
        CheXpert(chexpert["root"])


def test_bad_values_and_missing_files(chexpert, tmp_path):
    train = chexpert["root"] / "train.csv"
    lines = train.read_text().splitlines()
    lines[2] = lines[2].rsplit(",", 1)[0] + ",2.0"
    train.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match="train.csv line 3: Support Devices is '2.0'"):
        CheXpert(chexpert["root"], view="all")
    (chexpert["root"] / "valid.csv").unlink()
    with pytest.raises(UserError, match="no valid.csv"):
        CheXpert(chexpert["root"])
    with pytest.raises(UserError, match="no train.csv"):
        CheXpert(tmp_path / RELEASE / "train")
    with pytest.raises(UserError, match="does not exist"):
        CheXpert(tmp_path / "nope")
    with pytest.raises(UserError, match="needs its folder"):
        CheXpert()
    with pytest.raises(UserError, match="uncertain must be one of"):
        CheXpert(chexpert["root"], uncertain="random")


def test_data_check_cli(chexpert, tmp_path, capsys):
    code = main(["data", "check", "--dataset", "chexpert", "--data-root", str(tmp_path), "--json", "--workers", "0",
                 "--data-option", "uncertain=ignore", "--data-option", "labels=[Atelectasis, Pleural Effusion]"])
    out, err = capsys.readouterr()
    assert code == 0, err
    report = json.loads(out)
    assert report["dataset"] == "chexpert" and report["labels"] == ["Atelectasis", "Pleural Effusion"]
    assert report["missing"] == 0 and report["patient_overlap"] == 0 and not report["corrupt"]
    assert sum(s["images"] for s in report["splits"].values()) == len(CheXpert(chexpert["root"]))
    code = main(["data", "check", "--set", "dataset.name=chexpert", "--set", f"dataset.root={chexpert['root']}",
                 "--set", "dataset.val_fraction=0.3", "--json", "--workers", "0"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out)["splits"]["val"]["images"] > 0
    code = main(["data", "check", "--dataset", "chexpert", "--data-root", str(chexpert["root"]), "--workers", "0"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "Pleural Effusion" in out and "chexpert" in out


def test_chexpert_run_with_unknown_labels_end_to_end(tmp_path, capsys):
    """Uncertain findings left unknown (NaN) train, score, explain and defend with CheXpert's own label names."""
    from medbackdoor.metrics import load_predictions

    fx = make_chexpert(tmp_path, n_train=36, n_valid=10, size=48)
    run = tmp_path / "run"
    args = ["--set", "dataset.name=chexpert", "--set", f"dataset.root={fx['root']}",
            "--set", "dataset.options={uncertain: ignore}", "--set", "image_size=32", "--set", "train.epochs=1",
            "--set", "train.batch_size=16", "--set", "eval.epsilons=[0.5]", "--set", f"cache_dir={tmp_path / 'c'}"]
    assert main(["run", "--config", "quick", *args, "--quiet", "--out", str(run)]) == 0
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["labels"] == list(OBSERVATIONS) and manifest["target"] == "Atelectasis"
    pred = load_predictions(run / "predictions" / "epoch_001.npz")
    assert np.isnan(pred["y_true"]).any() and list(pred["label_names"]) == list(OBSERVATIONS)
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "auroc_Pleural Effusion" in header and "auroc_Effusion" not in header
    row = dict(zip(header, (run / "metrics.csv").read_text().splitlines()[1].split(",")))
    assert np.isfinite(float(row["auroc_nn"])) and np.isfinite(float(row["train_loss"]))
    capsys.readouterr()
    assert main(["explain", str(run), "--images", "4", "--target", "Pleural Effusion"]) == 0
    assert main(["explain", str(run), "--images", "4", "--target", "Effusion"]) == 2
    assert "Pleural Effusion" in capsys.readouterr().err
    assert main(["defend", str(run), "--method", "label-audit", "--set", "reference=holdout"]) == 0
