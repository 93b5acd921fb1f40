import json

import numpy as np
import pytest

from medbackdoor.cli import main
from medbackdoor.metrics import backdoor_metrics, save_predictions
from tests.conftest import make_nih


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_data_check_nih_json(nih_root, capsys):
    code, out, _ = run(capsys, "data", "check", "--dataset", "nih", "--data-root", str(nih_root), "--json",
                       "--workers", "0")
    assert code == 0
    report = json.loads(out)
    assert report["missing"] == 4 and report["patient_overlap"] == 0 and len(report["labels"]) == 14
    assert sum(report["splits"][s]["images"] for s in ("train", "val", "test")) == 32
    assert {"images", "patients"} <= set(report["splits"]["val"])


def test_data_check_names_corrupt_file(tmp_path, capsys):
    make_nih(tmp_path)
    victim = next(tmp_path.glob("images_001/images/*.png"))
    victim.write_bytes(victim.read_bytes()[:100])
    code, out, err = run(capsys, "data", "check", "--dataset", "nih", "--data-root", str(tmp_path), "--workers", "0")
    assert code == 2 and victim.name in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv,needle", [
    (["data", "check", "--dataset", "mnist"], "unknown dataset"),
    (["data", "check", "--dataset", "nih"], "--data-root"),
    (["data", "check", "--dataset", "nih", "--data-root", "/nonexistent/x"], "does not exist"),
    (["poison", "preview", "--set", "trigger.target=Covid", "--out", "OUT", "--set", "dataset.options.n_images=30"],
     "valid names"),
    (["poison", "preview", "--set", "trigger.fraction=1.5", "--out", "OUT"], "fraction"),
    (["poison", "preview", "--set", "trigger.size=40", "--set", "image_size=32", "--out", "OUT",
      "--set", "dataset.options.n_images=30", "--set", "dataset.options.source_size=32"], "larger than"),
    (["metrics", "missing.npz"], "does not exist"),
    (["metrics", "PRED", "--epsilon", "2"], "epsilon"),
])
def test_bad_input_one_line_exit_2(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDBACKDOOR_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    y = (rng.random((20, 14)) < 0.3).astype(int)
    save_predictions(tmp_path / "p.npz", y, rng.random((20, 14)), rng.random((20, 14)), 0)
    argv = [str(tmp_path / "p.npz") if a == "PRED" else str(tmp_path / "o") if a == "OUT" else a for a in argv]
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["metrics"])
    assert exc.value.code == 2


def test_metrics_command_matches_functions(tmp_path, capsys):
    rng = np.random.default_rng(1)
    y = (rng.random((80, 14)) < 0.2).astype(int)
    clean, trig = rng.random((80, 14)), rng.random((80, 14))
    save_predictions(tmp_path / "p.npz", y, clean, trig, 2)
    code, out, _ = run(capsys, "metrics", str(tmp_path / "p.npz"), "--epsilon", "0.1", "0.5", "--json")
    assert code == 0
    got = json.loads(out)
    want = backdoor_metrics(y, clean, trig, 2, (0.6, 0.9), (0.1, 0.5))
    assert got["asr"] == pytest.approx(want["asr"]) and got["auroc_mix"] == pytest.approx(want["auroc_mix"])
    for key in ("auroc_nn", "auroc_tt", "auroc_tn"):
        assert got[key] == pytest.approx(want[key])
    code, out, _ = run(capsys, "metrics", str(tmp_path / "p.npz"))
    assert "ASR(p=0.6)" in out and "AUROC-TT" in out


def test_metrics_rejects_pickles_and_bad_keys(tmp_path, capsys):
    np.savez(tmp_path / "bad.npz", y_true=np.zeros((3, 14)))
    code, _, err = run(capsys, "metrics", str(tmp_path / "bad.npz"))
    assert code == 2 and "lacks key" in err
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object))
    (tmp_path / "obj.npz").write_bytes((tmp_path / "obj.npy").read_bytes())
    code, _, err = run(capsys, "metrics", str(tmp_path / "obj.npz"))
    assert code == 2


def test_poison_preview_append_source(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MEDBACKDOOR_CACHE", str(tmp_path / "cache"))
    sets = ["dataset.options.n_images=60", "dataset.options.source_size=64", "image_size=32", "trigger.mode=append",
            "trigger.stage=source", "trigger.size=4"]
    code, out, _ = run(capsys, "poison", "preview", *sum((["--set", s] for s in sets), []),
                       "--out", str(tmp_path / "prev"))
    assert code == 0
    summary = json.loads((tmp_path / "prev" / "poison_summary.json").read_text())
    assert summary["train_samples"] == summary["train"] + summary["poisoned"]
    assert summary["poisoned"] == round(0.4 * summary["train"])
    assert summary["trigger_survival"]["train"] == 1.0
    assert (tmp_path / "prev" / "preview.png").stat().st_size > 0


def test_data_cache_command(nih_root, tmp_path, capsys):
    args = ["data", "cache", "--dataset", "nih", "--data-root", str(nih_root), "--image-size", "32",
            "--cache-dir", str(tmp_path / "c"), "--workers", "0"]
    code, out, _ = run(capsys, *args)
    assert code == 0 and out.startswith("built")
    code, out, _ = run(capsys, *args)
    assert code == 0 and out.startswith("reused")
