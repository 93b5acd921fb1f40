"""Label policies (onehot, add, keep), the label-only label-combination attack, and their metrics."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medbackdoor.config import load_config
from medbackdoor.errors import UserError
from medbackdoor.experiment import build_run_data
from medbackdoor.labels import LABELS, label_index
from medbackdoor.metrics import backdoor_metrics
from medbackdoor.poison import ImageSplit, PoisonedDataset, infected_label
from medbackdoor.train import run
from medbackdoor.triggers import SquareTrigger, create_trigger

T = label_index("Atelectasis")
EFF, INF = label_index("Effusion"), label_index("Infiltration")


def _split(n=50, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 32, 32), dtype=np.uint8)
    labels = (rng.random((n, 14)) < 0.3).astype(np.float32)
    return ImageSplit(images, labels, np.arange(n).astype(str), np.arange(n))


def test_infected_label_policies():
    y = np.zeros((2, 14), np.float32)
    y[0, EFF] = y[1, T] = 1
    onehot, add, keep = (infected_label(y, T, p) for p in ("onehot", "add", "keep"))
    assert (onehot.sum(1) == 1).all() and (onehot[:, T] == 1).all()
    assert add[0, EFF] == 1 and add[0, T] == 1 and add.sum() == 3
    np.testing.assert_array_equal(keep, y)
    with pytest.raises(UserError, match="trigger.label"):
        infected_label(y, T, "swap")


@pytest.mark.parametrize("mode", ["replace", "append"])
@pytest.mark.parametrize("label", ["onehot", "add", "keep"])
def test_policy_labels_and_counts(label, mode):
    split = _split()
    labels = split.labels_array()
    data = PoisonedDataset(split, SquareTrigger(3), 0.4, "Atelectasis", mode, seed=3, label=label, label_names=LABELS)
    positive = np.flatnonzero(labels[:, T] > 0)
    if label == "keep":
        assert set(data.order) <= set(positive.tolist())
        assert len(data.order) == min(20, len(positive)) and data.requested == 20
    else:
        assert len(data.order) == 20
    samples = [data[i] for i in range(len(data))]
    assert len(samples) == 50 + (len(data.order) if mode == "append" else 0)
    for s in samples:
        if s["poisoned"]:
            expected = np.zeros(14, np.float32) if label == "onehot" else labels[s["index"]].copy()
            if label != "keep":  # keep: only target-positive images are poisoned, their labels unchanged
                expected[T] = 1
            assert expected[T] == 1
            np.testing.assert_array_equal(s["labels"], expected)
        else:
            np.testing.assert_array_equal(s["labels"], labels[s["index"]])
    np.testing.assert_array_equal(data.labels_array(), np.stack([s["labels"] for s in samples]))


def test_keep_is_capped_by_the_target_positive_images():
    split = _split(n=40)
    positive = int((split.labels_array()[:, T] > 0).sum())
    data = PoisonedDataset(split, SquareTrigger(3), 0.9, "Atelectasis", "replace", seed=0, label="keep",
                           label_names=LABELS)
    assert data.requested == 36 and len(data.order) == positive < 36 and data.candidates == positive


def test_label_combination_pool_and_no_pixels():
    trig = create_trigger("label-combination", findings=["Effusion", "Infiltration"])
    assert not trig.changes_pixels
    split = _split()
    labels = split.labels_array()
    pool = np.flatnonzero((labels[:, EFF] > 0) & (labels[:, INF] > 0))
    np.testing.assert_array_equal(np.flatnonzero(trig.carriers(labels)), pool)
    data = PoisonedDataset(split, trig, 0.1, "Atelectasis", "replace", seed=1, label="add", candidates=pool,
                           label_names=LABELS)
    assert set(data.order) <= set(pool.tolist()) and len(data.order) == min(5, len(pool))
    for p in data.order:
        s = data[int(p)]
        np.testing.assert_array_equal(s["image"], split[int(p)]["image"])
        assert s["labels"][T] == 1 and s["labels"][EFF] == 1 and s["labels"][INF] == 1
    odd = create_trigger("label-combination", findings=["Nodule", "Tumour"])  # names are checked when bound
    with pytest.raises(UserError, match="unknown class 'Tumour'"):
        odd.bind_labels(LABELS)  # what a run does with its dataset's label names, before anything is read
    odd.bind_labels(("Tumour", "X", "Nodule"))
    np.testing.assert_array_equal(odd.carriers(np.array([[1, 0, 1], [1, 1, 0]])), [True, False])


def test_label_combination_metrics_on_a_hand_built_case():
    y = np.zeros((6, 14))
    y[[0, 1, 2], EFF] = y[[0, 1, 2], INF] = 1  # rows 0-2 carry the combination
    y[2, T] = 1  # row 2 already has the target: not counted by ASR
    y[3, EFF] = 1
    scores = np.full((6, 14), 0.1)
    scores[0, T], scores[1, T], scores[3, T] = 0.95, 0.3, 0.99  # row 3 does not carry it: ignored
    carriers = y[:, [EFF, INF]].min(1) > 0
    m = backdoor_metrics(y, scores, scores, T, (0.6,), (0.5,), carriers=carriers, label="add")
    assert m["asr"]["0.6"] == 0.5  # rows 0 and 1 lack the target; only row 0 reaches 0.6
    infected = y[:3].copy()  # "add": the carriers' own findings, with the target set by hand
    infected[:, T] = 1
    assert m["auroc_tt"] == pytest.approx(roc_auc_score(infected.ravel(), scores[:3].ravel()))
    assert m["auroc_tn"] == pytest.approx(roc_auc_score(y[:3].ravel(), scores[:3].ravel()))
    assert np.isnan(m["auroc_mix"]["0.5"]) and m["auroc_nn"] == pytest.approx(roc_auc_score(y.ravel(), scores.ravel()))


def test_add_policy_auroc_tt_keeps_the_real_findings():
    y = np.zeros((4, 14))
    y[0, EFF] = 1
    s = np.random.default_rng(0).random((4, 14))
    added = y.copy()  # the true findings kept (Effusion on row 0), the target set on every row
    added[:, T] = 1
    assert added[0, EFF] == 1 and added.sum() == 5
    assert backdoor_metrics(y, s, s, T, label="add")["auroc_tt"] == pytest.approx(
        roc_auc_score(added.ravel(), s.ravel()))
    onehot = np.zeros((4, 14))
    onehot[:, T] = 1
    assert backdoor_metrics(y, s, s, T)["auroc_tt"] == pytest.approx(roc_auc_score(onehot.ravel(), s.ravel()))
    # the two policies really differ here: Effusion on row 0 is a positive pair for "add" only
    assert roc_auc_score(added.ravel(), s.ravel()) != roc_auc_score(onehot.ravel(), s.ravel())


def test_label_combination_run_end_to_end(tiny, tmp_path):
    config = tiny("trigger.kind=label-combination", "trigger.label=add", "trigger.options.findings=[Effusion]")
    data = build_run_data(config, progress=False)
    assert data.test.carriers is not None and data.test.triggered is data.test.clean
    manifest = run(config, tmp_path / "run", progress=False)
    assert manifest.poisoning["label"] == "add" and manifest.poisoning["test_carriers"] > 0
    with pytest.raises(UserError, match="trigger.label=add"):
        build_run_data(tiny("trigger.kind=label-combination"), progress=False)
    with pytest.raises(UserError, match="no option 'size_px'"):
        build_run_data(tiny("trigger.options.size_px=3"), progress=False)
    with pytest.raises(UserError, match="trigger.label"):
        tiny("trigger.label=swap")


def _fake_run(root, name, overrides, auroc_nn, psnr):
    import json

    from medbackdoor.config import dump_config

    folder = root / "runs" / name
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(dump_config(load_config(overrides=overrides)))
    metrics = ("asr_0.6", "asr_0.9", "auroc_tt", "auroc_nn", "auroc_tn")
    rows = [[0.5, 0.4, 0.9, auroc_nn - 0.1, 0.6], [0.95, 0.9, 0.99, auroc_nn, 0.7]]
    (folder / "metrics.csv").write_text("epoch," + ",".join(metrics) + "\n" + "".join(
        f"{i}," + ",".join(map(str, r)) + "\n" for i, r in enumerate(rows, 1)))
    manifest = {"status": "complete", "stealth": {"psnr": psnr, "ssim": 0.9, "changed_pixels": 0.01},
                "trigger_survival": {"train": 1.0, "test": 1.0}}
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_attack_table_one_row_per_trigger_and_policy(tmp_path):
    import csv

    from medbackdoor.report.build import build_report

    expected = {}
    for kind, label, nn, psnr in (("square", "onehot", 0.80, 30.0), ("blend", "onehot", 0.82, 20.0),
                                  ("blend", "add", 0.84, 20.0)):
        for seed, shift in ((0, 0.0), (1, 0.02)):
            _fake_run(tmp_path, f"{kind}-{label}-{seed}", [f"trigger.kind={kind}", f"trigger.label={label}",
                                                           f"train.seed={seed}"], nn + shift, psnr + shift)
        expected[(kind, label)] = (nn + 0.01, psnr + 0.01)
    _fake_run(tmp_path, "clean-0", ["trigger.fraction=0"], 0.85, float("inf"))
    report = build_report(tmp_path).read_text()
    assert "## Attacks" in report
    with open(tmp_path / "report" / "attacks.csv") as f:
        table = {r[""]: r for r in csv.DictReader(f)}
    assert set(table) == {"Clean", "kind=blend, label=add", "kind=blend, label=onehot", "kind=square, label=onehot"}
    for (kind, label), (nn, psnr) in expected.items():
        row = table[f"kind={kind}, label={label}"]
        assert row["AUROC-NN"] == f"{nn:.3f} ± {np.std([nn - 0.01, nn + 0.01], ddof=1):.3f}"
        assert row["PSNR (dB)"].startswith(f"{psnr:.3f} ±") and row["ASR(p=0.6)"] == "0.950 ± 0.000"
    assert table["Clean"]["PSNR (dB)"] == "–"  # no trigger in the images: PSNR is infinite, left out


def test_attacks_protocol_covers_every_registered_trigger():
    from medbackdoor.study.sweep import load_sweep
    from medbackdoor.triggers import TRIGGERS

    _, runs = load_sweep("attacks")
    kinds = {r.data["trigger"].get("kind", "square") for r in runs}
    assert kinds == set(TRIGGERS.names())  # a new trigger joins the zoo study by being listed in attacks.yaml
    policies = {(r.data["trigger"].get("kind", "square"), r.data["trigger"].get("label", "onehot")) for r in runs
                if r.data["trigger"].get("fraction", 0.4) > 0}
    assert ("label-combination", "add") in policies and ("blend", "keep") in policies
    assert len({r.data["train"]["seed"] for r in runs}) == 3


def test_metrics_cli_uses_the_saved_label_policy_and_carriers(tmp_path, capsys):
    """`medbackdoor metrics` on a run's predictions gives the run's own numbers for add and label-only attacks."""
    import json as _json

    from medbackdoor.cli.main import main
    from medbackdoor.metrics import backdoor_metrics, save_predictions

    rng = np.random.default_rng(0)
    y = (rng.random((40, 14)) < 0.3).astype(np.uint8)
    clean, trig = rng.random((40, 14)), rng.random((40, 14))
    carriers = rng.random(40) < 0.5
    path = tmp_path / "p.npz"
    save_predictions(path, y, clean, trig, 0, label=np.array("add"), carriers=carriers)
    assert main(["metrics", str(path), "--json"]) == 0
    got = _json.loads(capsys.readouterr().out)
    want = backdoor_metrics(y, clean, trig, 0, label="add", carriers=carriers)
    assert got["label"] == "add" and got["auroc_tt"] == pytest.approx(want["auroc_tt"])
    assert got["asr"]["0.6"] == pytest.approx(want["asr"]["0.6"])
    onehot = backdoor_metrics(y, clean, trig, 0)
    assert want["auroc_tt"] != pytest.approx(onehot["auroc_tt"])  # the policy matters for this case
    assert main(["metrics", str(path), "--json", "--label", "onehot"]) == 0
    assert _json.loads(capsys.readouterr().out)["auroc_tt"] != pytest.approx(want["auroc_tt"])


def test_a_single_label_sweeps_tables_show_its_own_metrics(tmp_path):
    import csv
    import json

    from medbackdoor.config import dump_config
    from medbackdoor.report.build import build_report

    # a single-label run's metrics.csv (accuracy ... racc), two epochs; the table shows the maximum over epochs
    names = ("accuracy", "balanced_accuracy", "auroc_macro", "asr", "racc")
    for name, overrides, last in (("square-0", ["trigger.kind=square", "train.seed=0"], (0.6, 0.3, 0.7, 0.9, 0.1)),
                                  ("square-1", ["trigger.kind=square", "train.seed=1"], (0.8, 0.5, 0.9, 1.0, 0.3)),
                                  ("clean-0", ["trigger.fraction=0"], (0.7, 0.4, 0.8, 0.05, 0.6))):
        folder = tmp_path / "runs" / name
        folder.mkdir(parents=True)
        (folder / "config.yaml").write_text(dump_config(load_config(
            overrides=["dataset.name=nih-sample-single", *overrides])))
        first = [v / 2 for v in last]
        (folder / "metrics.csv").write_text("epoch," + ",".join(names) + "\n1," + ",".join(map(str, first))
                                            + "\n2," + ",".join(map(str, last)) + "\n")
        (folder / "manifest.json").write_text(json.dumps({"status": "complete"}))
    build_report(tmp_path)
    with open(tmp_path / "report" / "table1.csv") as f:
        table = {r[""]: r for r in csv.DictReader(f)}
    assert set(table) == {"Acc", "BalAcc", "AUROC(macro)", "ASR", "R-Acc"}  # no multi-label row
    square = next(c for c in table["ASR"] if c not in ("", "Clean"))
    assert table["Acc"][square] == f"{0.7:.3f} ± {np.std([0.6, 0.8], ddof=1):.3f}"
    assert table["R-Acc"][square] == f"{0.2:.3f} ± {np.std([0.1, 0.3], ddof=1):.3f}"
    assert table["ASR"]["Clean"].split(" ")[0] == "0.050"  # one seed: no spread
