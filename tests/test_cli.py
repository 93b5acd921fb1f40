import json

import numpy as np
import pytest
import yaml

from medbackdoor.cli import main
from medbackdoor.cli._common import alias_overrides, config_from_args
from medbackdoor.cli.main import build_parser
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
    (["data", "check", "--set", "dataset.name=mnist"], "unknown dataset"),
    (["data", "check", "--set", "dataset.limit=many"], "dataset.limit"),
    (["data", "check", "--set", "dataset.colour=gray"], "unknown config key dataset.colour"),
    (["data", "check", "--data-option", "n_images"], "KEY=VALUE"),
    (["data", "check", "--data-option", "colour=gray"], "dataset synthetic has no option 'colour'"),
    (["data", "check", "--config", "nope.yaml"], "does not exist"),
    (["data", "cache", "--image-size", "16"], "image_size must be at least 32"),
    (["data", "cache", "--crop", "1.5"], "preprocess.crop"),
    (["data", "cache", "--set", "preprocess.resize=cubic"], "preprocess.resize"),
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


def test_data_check_set_and_config_agree_with_shorthands(nih_root, tmp_path, capsys):
    config = tmp_path / "nih.yaml"
    config.write_text(yaml.safe_dump({"dataset": {"name": "nih", "root": str(nih_root), "limit": 5}}))
    ways = [
        ["--dataset", "nih", "--data-root", str(nih_root), "--limit", "5"],
        ["--set", "dataset.name=nih", "--set", f"dataset.root={nih_root}", "--set", "dataset.limit=5"],
        ["--config", str(config)],
        ["--config", str(config), "--limit", "7", "--set", "dataset.limit=5"],  # an explicit --set wins
        ["--dataset", "synthetic", "--set", "dataset.name=nih", "--data-root", str(nih_root), "--limit", "5"],
    ]
    reports = []
    for way in ways:
        code, out, err = run(capsys, "data", "check", *way, "--json", "--workers", "0")
        assert code == 0, err
        reports.append(json.loads(out))
    assert all(r == reports[0] for r in reports)
    assert reports[0]["dataset"] == "nih" and all(s["images"] <= 5 for s in reports[0]["splits"].values())


def test_data_cache_reads_the_run_config(tmp_path, capsys):
    cache = tmp_path / "c"
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"dataset": {"options": {"n_images": 30, "source_size": 48}}, "image_size": 32,
                                      "preprocess": {"crop": 0.6, "resize": "nearest"}, "cache_dir": str(cache)}))
    code, out, err = run(capsys, "data", "cache", "--config", str(config), "--workers", "0")
    assert code == 0 and out.startswith(f"built {cache}"), err
    assert len(list(cache.glob("synthetic-32px-*.npy"))) == 1
    # the same data spelled with shorthands and with --set: the same cache file, reused
    shorthand = ["--data-option", "n_images=30", "--data-option", "source-size=48", "--image-size", "32", "--crop",
                 "0.6", "--resize", "nearest", "--cache-dir", str(cache)]
    sets = ["dataset.options.n_images=30", "dataset.options.source_size=48", "image_size=32", "preprocess.crop=0.6",
            "preprocess.resize=nearest", f"cache_dir={cache}"]
    for way in (shorthand, sum((["--set", s] for s in sets), [])):
        code, out, err = run(capsys, "data", "cache", *way, "--workers", "0")
        assert code == 0 and out.startswith(f"reused {cache}") and "at 32px" in out, err
    # flags left out do not clobber the config file's values; a shorthand overrides them
    code, out, _ = run(capsys, "data", "cache", "--config", str(config), "--resize", "area", "--workers", "0")
    assert code == 0 and out.startswith("built")
    assert len(list(cache.glob("synthetic-32px-*.npy"))) == 2


def test_shorthands_are_set_overrides_applied_before_explicit_sets():
    args = build_parser().parse_args([
        "data", "cache", "--set", "image_size=48", "--image-size", "32", "--data-root", "2020", "--crop", "0.5",
        "--data-option", "split=official", "--data-option", "n-images=9"])
    assert alias_overrides(args) == ['dataset.root="2020"', "image_size=32", "preprocess.crop=0.5",
                                     "dataset.split=official", "dataset.options.n_images=9"]
    config = config_from_args(args)
    assert config.image_size == 48 and config.dataset.root == "2020" and config.dataset.split == "official"
    assert config.dataset.options == {"n_images": 9} and config.preprocess.crop == 0.5
    assert alias_overrides(build_parser().parse_args(["data", "check"])) == []
