"""The benchmark's scorecard, its rules and its frozen defaults: numbers checked against hand counts and published
constants, on run folders written by hand (fast), and the clean-model baseline on tiny trained runs."""

from __future__ import annotations

import csv
import hashlib
import json
import math

import numpy as np
import pandas as pd
import pytest

from medbackdoor.cli.main import main
from medbackdoor.config import load_config
from medbackdoor.defenses.summary import DefenseSummary, write_summary
from medbackdoor.manifest import Manifest
from medbackdoor.metrics.predictions import save_predictions
from medbackdoor.report.aggregate import read_runs
from medbackdoor.report.scorecard import COLUMNS, RULES, firing_mask, interval, scorecard
from medbackdoor.rundir import RunDir

T_975_2 = 4.302652729911275  # Student t, 97.5% quantile, 2 degrees of freedom (published tables)


def test_interval_is_the_student_t_interval_of_the_mean():
    mean, lo, hi = interval([1.0, 2.0, 3.0])
    half = T_975_2 * 1.0 / math.sqrt(3)  # sample sd of 1, 2, 3 is 1
    assert mean == pytest.approx(2.0) and lo == pytest.approx(2 - half) and hi == pytest.approx(2 + half)
    mean, lo, hi = interval([0.4, float("nan")])
    assert mean == pytest.approx(0.4) and math.isnan(lo) and math.isnan(hi)
    assert all(math.isnan(v) for v in interval([]))


def test_firing_mask_counts_by_hand():
    # target 1; rows: lacks target & fires, lacks & below p, has the target (not eligible), unknown label, fires
    y = np.array([[0, 0], [0, 0], [0, 1], [0, np.nan], [1, 0]], np.float32)
    s = np.array([[0, 0.6], [0, 0.59], [0, 0.99], [0, 0.99], [0, 0.7]], np.float32)
    pred = {"y_true": y, "score_triggered": s, "target": np.int64(1)}
    assert firing_mask(pred, 0.6, strict=False).tolist() == [True, False, False, False, True]
    assert firing_mask(pred, 0.6, strict=True).tolist() == [False, False, False, False, True]
    pred["condition"] = np.array([False, True, True, True, True])  # a source-specific trigger: source rows only
    assert firing_mask(pred, 0.6, strict=False).tolist() == [False, False, False, False, True]


# --- a sweep written by hand -------------------------------------------------------------------------------------

LABELS = ["A", "B"]
TEST_ROWS = np.array([10, 11, 12, 13])


def _run(root, name: str, fraction: float, seed: int, asr: float, target_scores, nn_before=0.8):
    folder = root / "runs" / name
    rd = RunDir(folder)
    folder.mkdir(parents=True)
    rd.write_config(load_config(overrides=[f"trigger.fraction={fraction}", f"train.seed={seed}",
                                           "trigger.target=Atelectasis"]))
    rd.write_metrics([{"epoch": 1, "asr_0.6": asr, "asr_0.9": asr, "auroc_nn": nn_before}])
    rd.write_manifest(Manifest(status="complete", labels=LABELS))
    y = np.zeros((4, 2), np.uint8)
    y[3, 1] = 1  # row 13 has the target: never eligible
    triggered = np.zeros((4, 2), np.float32)
    triggered[:, 1] = target_scores
    save_predictions(rd.predictions_path(1), y, np.full((4, 2), 0.3, np.float32), triggered, 1, rows=TEST_ROWS)
    return rd


def _input_defense(rd: RunDir, name: str, clean, triggered, flags_clean, flags_trig, folder=None):
    folder = folder or rd.defense_dir(name)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "scores.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["set", "test_row", "score", "flagged"])
        for what, scores, flags in (("clean", clean, flags_clean), ("triggered", triggered, flags_trig)):
            for row, s, fl in zip(TEST_ROWS, scores, flags):
                w.writerow([what, row, s, fl])
    write_summary(folder / "summary.json", DefenseSummary(name=name, method="strip", kind="input", run=str(rd.path),
                                                          epoch=1, holdout=10, request={}, options={"fpr": 0.05},
                                                          defaults_digest="abc"))


def _repair(rd: RunDir, before: float, after: float, nn_before: float, nn_after: float, folder=None):
    folder = folder or rd.defense_dir("fix")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "scores.csv").write_text("when\n")
    write_summary(folder / "summary.json", DefenseSummary(
        name="fix", method="i-bau", kind="mitigation", run=str(rd.path), epoch=1, holdout=10, request={},
        before={"asr_0.6": before, "auroc_nn": nn_before}, after={"asr_0.6": after, "auroc_nn": nn_after,
                                                                 "auroc_nn_macro": nn_after - 0.1},
        defaults_digest="abc"))


@pytest.fixture
def sweep(tmp_path):
    """Two seeds of a square attack on target B (index 1) and their clean controls."""
    root = tmp_path / "sweep"
    for seed, asr, control_asr in ((0, 0.9, 0.1), (1, 0.7, 0.2)):
        _run(root, f"clean_{seed}", 0.0, seed, 0.0, [0.1] * 4)
        # rows 10 and 12 fire (target score ≥ 0.6, label lacks the target); row 11 does not; row 13 has the target
        rd = _run(root, f"attack_{seed}", 0.4, seed, asr, [0.9, 0.2, 0.8, 0.95])
        control = {"control": f"clean_{seed}", "control_epoch": 1, "asr": {"0.6": control_asr}}
        (rd.path / "control.json").write_text(json.dumps(control))
        # backdoored model: clean 0.1 0.2 0.3 0.4; triggered 0.35 (fires), 0.0 (does not), 0.9 (fires), 0.05
        _input_defense(rd, "strip", [0.1, 0.2, 0.3, 0.4], [0.35, 0.0, 0.9, 0.05], [0, 0, 0, 1], [0, 0, 1, 0])
        # the same detector on the clean model: firing rows score 0.25 and 0.15 against clean 0.1 0.2 0.3 0.4
        _input_defense(rd, "strip", [0.1, 0.2, 0.3, 0.4], [0.25, 0.99, 0.15, 0.99], [0] * 4, [0] * 4,
                       rd.clean_model_dir("strip"))
        _repair(rd, asr, 0.3 + 0.1 * seed, 0.8, 0.78)
        _repair(rd, control_asr, 0.05, 0.8, 0.79, rd.clean_model_dir("fix"))
    return root


def test_scorecard_rows_match_hand_counts(sweep):
    records, _ = read_runs(sweep)
    df = scorecard(records)
    assert list(df.columns) == COLUMNS
    strip = df[df["defense"] == "strip"].iloc[0]
    assert strip["seeds"] == 2 and strip["kind"] == "input"
    assert strip["asr"] == pytest.approx(0.8) and strip["asr_clean_model"] == pytest.approx(0.15)
    assert bool(strip["implanted"])  # 0.8 − 0.15 ≥ 0.5
    # firing rows only: 0.35 beats 3 of 4 clean scores, 0.9 beats all 4 → 7/8 (the non-firing 0.0 and 0.05 are out)
    assert strip["auroc"] == pytest.approx(7 / 8) and strip["firing"] == 2
    # clean model on the same rows: 0.25 beats 2, 0.15 beats 1 → 3/8
    assert strip["auroc_clean_model"] == pytest.approx(3 / 8) and bool(strip["detects"])
    # flag rule: firing rows flagged 1 of 2 (row 12), clean rows flagged 1 of 4
    assert strip["tpr"] == pytest.approx(0.5) and strip["fpr"] == pytest.approx(0.25)
    assert strip["fpr_nominal"] == pytest.approx(0.05) and strip["defaults_digest"] == "abc"
    assert strip["meets_target"] is False or strip["meets_target"] == 0  # AUROC 0.875 < 0.95
    fix = df[df["defense"] == "fix"].iloc[0]
    # after: 0.3 and 0.4; the clean controls repaired alike: 0.05 each
    assert fix["asr_after"] == pytest.approx(0.35)
    half = 12.706204736174698 * np.std([0.3, 0.4], ddof=1) / math.sqrt(2)  # t(0.975, 1 df)
    assert fix["asr_after_lo"] == pytest.approx(0.35 - half) and fix["asr_after_hi"] == pytest.approx(0.35 + half)
    assert fix["d_asr"] == pytest.approx(np.mean([0.3 - 0.9, 0.4 - 0.7]))
    assert fix["control_after"] == pytest.approx(0.05) and bool(fix["control_mitigated"])
    assert fix["excess_after"] == pytest.approx(0.30)
    assert fix["d_auroc_nn"] == pytest.approx(-0.02) and fix["auroc_macro"] == pytest.approx(0.68)
    # DER per seed: excess before (0.9−0.1, 0.7−0.2), after (0.3−0.05, 0.4−0.05); AUROC-NN drop 0.02
    ders = [((0.8 - 0.25) - 0.02 + 1) / 2, ((0.5 - 0.35) - 0.02 + 1) / 2]
    assert fix["der"] == pytest.approx(np.mean(ders))
    assert fix["meets_target"] is False or fix["meets_target"] == 0  # excess 0.30 > 0.10


def test_an_attack_that_did_not_implant_credits_no_defense(sweep):
    for seed in (0, 1):  # the clean controls respond almost as strongly: the excess is below the margin
        (sweep / "runs" / f"attack_{seed}" / "control.json").write_text(
            json.dumps({"control": f"clean_{seed}", "control_epoch": 1, "asr": {"0.6": 0.5}}))
    df = scorecard(read_runs(sweep)[0])
    assert not df["implanted"].any()
    assert df["meets_target"].isna().all()


def test_without_a_clean_model_baseline_a_detector_is_not_credited(sweep):
    import shutil

    for seed in (0, 1):
        shutil.rmtree(RunDir(sweep / "runs" / f"attack_{seed}").clean_model_dir("strip"))
        shutil.rmtree(RunDir(sweep / "runs" / f"attack_{seed}").clean_model_dir("fix"))
    df = scorecard(read_runs(sweep)[0])
    strip, fix = df[df["defense"] == "strip"].iloc[0], df[df["defense"] == "fix"].iloc[0]
    assert math.isnan(strip["auroc_clean_model"]) and math.isnan(strip["detects"])
    # the repair's excess falls back to the unrepaired control, and says so
    assert not fix["control_mitigated"] and fix["control_after"] == pytest.approx(0.15)


def test_report_writes_the_scorecard(sweep):
    assert main(["report", str(sweep)]) == 0
    table = pd.read_csv(sweep / "report" / "scorecard.csv")
    assert list(table.columns) == COLUMNS and set(table["defense"]) == {"strip", "fix"}
    md = (sweep / "report" / "scorecard.md").read_text()
    assert "Leaderboard" in md and "implanted" in md and "[" in md  # intervals shown


# --- the frozen defaults ----------------------------------------------------------------------------------------

def test_the_code_matches_the_frozen_defaults_record(capsys):
    """A default changed in the code without freezing the record again fails here (and ``medbackdoor defaults``
    exits 1): an evaluation under a changed default is a new evaluation."""
    from medbackdoor.defaults import FROZEN

    assert main(["defaults"]) == 0, capsys.readouterr().out
    digest = hashlib.sha256(FROZEN.read_bytes()).hexdigest()[:12]
    assert digest in capsys.readouterr().out
    record = json.loads(FROZEN.read_text())
    assert record["rules"]["implant_margin"] == RULES["implant_margin"]
    assert record["defenses"]["strip"]["options"]["fpr"] == 0.05  # StripDefense()'s own default, by hand


def test_a_changed_default_is_reported(monkeypatch, capsys):
    from medbackdoor.report import scorecard as sc

    monkeypatch.setitem(sc.RULES, "implant_margin", 0.4)
    assert main(["defaults"]) == 1
    out = capsys.readouterr().out
    assert "rules.implant_margin: 0.5 -> 0.4" in out


def test_nih_sample_tune_and_eval_parts_are_patient_and_image_disjoint():
    from medbackdoor.data.nih_sample import NIHSample, load_asset

    tune, ev, every = NIHSample(part="tune"), NIHSample(part="eval"), NIHSample()
    assert not set(tune.patients) & set(ev.patients)
    assert not set(tune.names) & set(ev.names)
    assert sorted([*tune.names, *ev.names]) == sorted(every.names)
    pixels = load_asset()["images"]
    row = {n: i for i, n in enumerate(load_asset()["names"].tolist())}

    def hashes(d):
        return {hashlib.sha256(pixels[row[n]].tobytes()).hexdigest() for n in d.names}

    assert not hashes(tune) & hashes(ev)  # no evaluation image's pixels are a tuning image's
    assert 0.2 < len(tune) / len(every) < 0.3
    assert set(NIHSample(part="tune", seed=5).names) == set(tune.names)  # the part does not move with the split seed


# --- the clean-model baseline and `medbackdoor bench` on tiny trained runs ---------------------------------------

TINY = ["dataset.options.n_images=120", "dataset.options.source_size=32", "image_size=32", "train.epochs=1",
        "train.batch_size=16", "eval.epsilons=[0.1]", "trigger.mode=append"]

BRIGHT = '''
import numpy as np
from medbackdoor.defenses import InputDefense


class Brightness(InputDefense):
    """Scores an input by its mean pixel value."""

    def score(self, d, images):
        return np.asarray(images[:], np.float64).mean((1, 2))
'''


@pytest.mark.slow
def test_bench_runs_the_clean_model_baseline_and_adds_a_users_defense(tmp_path, monkeypatch, capsys):
    """``medbackdoor bench`` on a tiny grid: every input defense and repair of the poisoned run also runs on the
    clean control's model with the poisoned run's test inputs; the scorecard holds a row for the user's own
    defense beside the built-in ones."""
    monkeypatch.setenv("MEDBACKDOOR_CACHE", str(tmp_path / "cache"))
    (tmp_path / "bright.py").write_text(BRIGHT)
    grid = tmp_path / "grid.yaml"
    grid.write_text("base_config: quick\nclean_model: true\ngrid:\n  - trigger.fraction: [0.0, 0.4]\n"
                    "    train.seed: [0]\ndefenses:\n  - {method: strip, options: {k: 4}}\n"
                    "  - {method: fine-pruning, options: {epochs: 1}}\n  - label-audit\n")
    out = tmp_path / "out"
    args = ["bench", "--grid", str(grid), "--out", str(out), "--defense", f"{tmp_path / 'bright.py'}:Brightness"]
    for o in TINY:
        args += ["--set", o]
    assert main(args) == 0, capsys.readouterr().err
    run, control = RunDir(out / "runs" / "fraction-0.4_seed-0"), RunDir(out / "runs" / "fraction-0.0_seed-0")
    assert not run.clean_model_dir("label-audit").exists()  # a data defense has no clean-model baseline
    epoch = control.checkpoint_epochs()[-1]
    digest = hashlib.sha256(control.checkpoint_path(epoch).read_bytes()).hexdigest()[:16]
    for name in ("strip", "fine-pruning", "Brightness"):
        summary = json.loads((run.clean_model_dir(name) / "summary.json").read_text())
        assert summary["clean_model"]["checkpoint"] == digest  # the control's weights, named by their file
        assert summary["request"]["checkpoint"] == run.checkpoint_fingerprint(run.checkpoint_epochs()[-1])
    # the same test inputs: the clean-model scores cover the poisoned run's test rows, clean and triggered
    ours = pd.read_csv(run.defense_scores_path("Brightness"))
    base = pd.read_csv(run.clean_model_dir("Brightness") / "scores.csv")
    assert ours[["set", "test_row"]].equals(base[["set", "test_row"]])
    # brightness does not depend on the model: the two score the same inputs alike
    np.testing.assert_allclose(ours["score"], base["score"])
    # the repaired clean control is scored on the poisoned run's trigger
    repaired = json.loads((run.clean_model_dir("fine-pruning") / "summary.json").read_text())
    assert set(repaired["after"]) >= {"asr_0.6", "auroc_nn", "auroc_nn_macro"}
    table = pd.read_csv(out / "report" / "scorecard.csv")
    assert {"strip", "fine-pruning", "Brightness", "label-audit"} <= set(table["defense"])
    bright = table[table["defense"] == "Brightness"].iloc[0]
    assert bright["auroc"] == pytest.approx(bright["auroc_clean_model"]) or math.isnan(bright["auroc"])
    assert bool(table[table["defense"] == "fine-pruning"].iloc[0]["control_mitigated"])
    from medbackdoor.defaults import FROZEN

    frozen = hashlib.sha256(FROZEN.read_bytes()).hexdigest()[:12]
    assert set(table["defaults_digest"]) == {frozen}
    # the time of every training and defense, the clean-model step's included, in the report
    tasks = pd.read_csv(out / "report" / "time_by_task.csv")
    assert set(tasks[tasks["step"] == "training"]["run"]) == {run.path.name, control.path.name}
    assert {"strip", "fine-pruning", "Brightness"} <= set(tasks[tasks["step"] == "clean-model"]["name"])
    assert "## Time" in (out / "report" / "report.md").read_text()


def test_report_writes_the_scorecard_into_a_page_between_its_markers(sweep, tmp_path, capsys):
    page = tmp_path / "page.md"
    page.write_text("# Results\n\nbefore\n<!-- scorecard:begin -->\nold table\n<!-- scorecard:end -->\nafter\n")
    assert main(["report", str(sweep), "--page", str(page)]) == 0
    text = page.read_text()
    assert text.startswith("# Results\n\nbefore\n") and text.endswith("<!-- scorecard:end -->\nafter\n")
    assert "old table" not in text and "## Scorecard" in text and "### Leaderboard" in text
    page.write_text("no markers\n")
    assert main(["report", str(sweep), "--page", str(page)]) == 2
    assert "lacks the markers" in capsys.readouterr().err and page.read_text() == "no markers\n"


def test_the_ledger_names_the_frozen_record_in_force():
    """Freezing the defaults again changes the digest; the ledger must then say so (a new evaluation is due)."""
    from pathlib import Path

    from medbackdoor.defaults import FROZEN

    digest = hashlib.sha256(FROZEN.read_bytes()).hexdigest()[:12]
    ledger = (Path(__file__).resolve().parents[1] / "docs" / "results" / "ledger.md").read_text()
    assert f"The current frozen record: `{digest}`." in ledger


def test_the_defaults_page_is_rendered_from_the_frozen_record():
    """docs/results/defaults.md has one provenance row per default of the frozen record, values as frozen."""
    import subprocess
    import sys
    from pathlib import Path

    tool = Path(__file__).resolve().parents[1] / "tools" / "defaults_page.py"
    done = subprocess.run([sys.executable, str(tool), "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_cells_trigger_setting_names_what_it_changed():
    from medbackdoor.report.scorecard import trigger_setting

    assert trigger_setting({"trigger.kind": "patch", "trigger.size": 5, "trigger.location": None}) == "size=5"
    assert trigger_setting({"trigger.options.cover_ratio": 0.5, "trigger.options.alpha": 0.2}) == \
        "alpha=0.2 cover_ratio=0.5"
    assert trigger_setting({"trigger.kind": "square"}) == ""


def test_a_corrupt_defense_summary_is_one_line(sweep, capsys):
    (sweep / "runs" / "attack_0" / "defenses" / "strip" / "summary.json").write_text("{bad")
    assert main(["report", str(sweep)]) == 2
    err = capsys.readouterr().err
    assert "is not a defense summary" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (sweep / "report" / "report.md").exists()
