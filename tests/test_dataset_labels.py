"""Datasets declare their labels; unknown (NaN) labels are ignored by the loss and every metric; NIH and synthetic
runs are unchanged by that."""

import csv

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from medbackdoor.cli import main
from medbackdoor.data.base import ChestXrayDataset
from medbackdoor.errors import UserError
from medbackdoor.labels import LABELS, label_index
from medbackdoor.metrics import backdoor_metrics
from medbackdoor.metrics.multilabel import asr, micro_auroc, per_class_auroc
from medbackdoor.train.loop import bce_loss, class_weights

TINY = ["--set", "dataset.options.n_images=64", "--set", "dataset.options.source_size=32", "--set", "image_size=32",
        "--set", "train.epochs=1", "--set", "train.batch_size=16", "--set", "eval.epsilons=[0.5]"]


def _sk_micro(y, s):
    """Micro AUROC written out with scikit-learn: every known (image, label) pair pooled."""
    y, s = np.asarray(y, np.float64).ravel(), np.asarray(s, np.float64).ravel()
    known = np.isfinite(y)
    return roc_auc_score(y[known], s[known])


def test_synthetic_run_row_equals_its_predictions_scored_independently(tmp_path):
    """A tiny synthetic run's first metrics row holds, to its printed precision, what scikit-learn and a hand count
    give on the predictions the run saved; the per-finding columns are the 14 findings in order. (No number is
    pinned: floating-point kernels differ between CPUs, so any one machine's row is not portable.)"""
    assert main(["run", "--config", "quick", *TINY, "--set", f"cache_dir={tmp_path / 'c'}", "--out",
                 str(tmp_path / "run")]) == 0
    row = next(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert list(row)[11:25] == [f"auroc_{n}" for n in LABELS]
    with np.load(tmp_path / "run" / "predictions" / "epoch_001.npz", allow_pickle=False) as z:
        y, clean, trig, t = z["y_true"].astype(np.float64), z["score_clean"], z["score_triggered"], int(z["target"])
    assert LABELS[t] == "Atelectasis"
    onehot = np.zeros_like(y)
    onehot[:, t] = 1
    lacking = y[:, t] == 0
    expected = {"auroc_nn": _sk_micro(y, clean), "auroc_tt": _sk_micro(onehot, trig), "auroc_tn": _sk_micro(y, trig),
                "asr_0.6": np.mean(trig[lacking, t] >= 0.6), "asr_0.9": np.mean(trig[lacking, t] >= 0.9)}
    for c, name in enumerate(LABELS):
        col = y[:, c]
        expected[f"auroc_{name}"] = roc_auc_score(col, clean[:, c]) if 0 < col.sum() < len(col) else float("nan")
    finite = [v for k, v in expected.items() if k.startswith("auroc_") and k[6:] in LABELS and np.isfinite(v)]
    expected["mean_auroc_clean"] = np.mean(finite)
    for key, value in expected.items():
        got = float(row[key])
        if np.isnan(value):
            assert np.isnan(got), key
        else:
            assert got == pytest.approx(value, rel=1e-5, abs=1e-6), key


class Tiny(ChestXrayDataset):
    name = "tiny"

    def __init__(self, names, labels):
        self.label_names = tuple(names)
        n = len(labels)
        self._set_table([f"i{i}" for i in range(n)], labels, [f"p{i}" for i in range(n)], ["train"] * n)

    def read_source(self, index):
        return np.zeros((8, 8), np.uint8)

    def source_fingerprint(self):
        return {}


def test_dataset_declares_labels_and_checks_values():
    d = Tiny(["A", "B", "C"], [[0, 1, np.nan], [1, 0, 0]])
    assert d.label_names == ("A", "B", "C")
    s = d.summary()
    assert s["labels"] == ["A", "B", "C"]
    assert s["splits"]["train"]["positives"] == {"A": 1, "B": 1, "C": 0}
    assert s["splits"]["train"]["unknown"] == {"A": 0, "B": 0, "C": 1}
    with pytest.raises(UserError, match="expected"):
        Tiny(["A", "B"], [[0, 1, 0]])
    with pytest.raises(UserError, match="0, 1 or NaN"):
        Tiny(["A"], [[-1.0]])
    with pytest.raises(UserError, match="distinct"):
        Tiny(["A", "A"], [[0, 1]])


def test_label_index_among_a_datasets_names():
    names = ("No Finding", "Pleural Effusion", "Atelectasis")
    assert label_index("atelectasis", names) == 2
    assert label_index("Pleural Effusion", names) == 1
    with pytest.raises(UserError, match="valid names: No Finding, Pleural Effusion, Atelectasis"):
        label_index("Effusion", names)
    assert label_index("Pleural thickening") == LABELS.index("Pleural_Thickening")


def test_metrics_ignore_unknown_labels():
    rng = np.random.default_rng(0)
    y = (rng.random((40, 4)) < 0.4).astype(np.float64)
    s = rng.random((40, 4))
    unknown = rng.random((40, 4)) < 0.25
    y_nan = np.where(unknown, np.nan, y)
    known = ~unknown
    assert micro_auroc(y_nan, s) == pytest.approx(roc_auc_score(y[known], s[known]))
    per = per_class_auroc(y_nan, s)
    for c in range(4):
        assert per[c] == pytest.approx(roc_auc_score(y[known[:, c], c], s[known[:, c], c]))
    eligible = (y_nan[:, 1] == 0)
    assert asr(y_nan, s, 1, 0.5) == pytest.approx(float((s[eligible, 1] >= 0.5).mean()))
    m = backdoor_metrics(y_nan, s, s, 1, [0.6], [0.5], label="add")
    assert np.isfinite([m["auroc_nn"], m["auroc_tt"], m["auroc_tn"], m["auroc_mix"]["0.5"]]).all()
    assert micro_auroc(y, s) == pytest.approx(roc_auc_score(y.ravel(), s.ravel()))  # no NaN: sklearn's


def test_loss_ignores_unknown_labels():
    torch.manual_seed(0)
    logits = torch.randn(6, 3)
    y = torch.tensor([[1.0, 0, float("nan")], [0, 1, 1], [float("nan")] * 3, [1, 1, 0], [0, 0, 0], [1, 0, 1]])
    known = torch.isfinite(y)
    expected = F.binary_cross_entropy_with_logits(logits[known], y[known])
    assert bce_loss(logits, y) == pytest.approx(float(expected), rel=1e-6)
    clean = torch.nan_to_num(y)
    assert float(bce_loss(logits, clean)) == float(F.binary_cross_entropy_with_logits(logits, clean))
    w = class_weights(y.numpy())
    assert torch.isfinite(w[0]).all() and torch.isfinite(bce_loss(logits, y, w))
    logits.requires_grad_(True)
    bce_loss(logits, y).backward()
    assert (logits.grad[~known] == 0).all()
