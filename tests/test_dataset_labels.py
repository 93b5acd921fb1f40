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

# A tiny synthetic run's epoch-1 row, written by the code *before* datasets declared their labels (commit e79e1e5,
# this machine's torch 2.14.1, 2 threads): the refactor must leave a 14-finding run exactly as it was.
GOLDEN = {"train_loss": "0.601362", "val_loss": "0.563876", "val_auroc": "0.579618", "auroc_nn": "0.67033",
          "auroc_tt": "1", "auroc_tn": "0.69427", "asr_0.6": "1", "asr_0.9": "0", "auroc_mix_0.5": "0.659341",
          "mean_auroc_clean": "0.527015", "auroc_Atelectasis": "0.55", "auroc_Cardiomegaly": "nan",
          "auroc_Effusion": "0.692308", "auroc_Infiltration": "0.825", "auroc_Pneumothorax": "0.0833333",
          "auroc_Edema": "0.769231", "auroc_Emphysema": "0.0769231", "lr": "0.001"}
TINY = ["--set", "dataset.options.n_images=64", "--set", "dataset.options.source_size=32", "--set", "image_size=32",
        "--set", "train.epochs=1", "--set", "train.batch_size=16", "--set", "eval.epsilons=[0.5]"]


def test_synthetic_run_metrics_unchanged(tmp_path):
    if torch.__version__.split("+")[0] != "2.14.1" or torch.get_num_threads() != 2:
        pytest.skip("the golden row was recorded with torch 2.14.1 on 2 threads")
    assert main(["run", "--config", "quick", *TINY, "--set", f"cache_dir={tmp_path / 'c'}", "--out",
                 str(tmp_path / "run")]) == 0
    row = next(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert {k: row[k] for k in GOLDEN} == GOLDEN
    assert list(row)[11:25] == [f"auroc_{n}" for n in LABELS]


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
