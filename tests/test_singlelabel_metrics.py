"""Single-label metrics against hand counts and scikit-learn (a peer implementation)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score

from medbackdoor.errors import UserError
from medbackdoor.metrics.singlelabel import (
    accuracy,
    asr,
    auroc_macro,
    balanced_accuracy,
    class_indices,
    per_class_auroc,
    racc,
    single_label_metrics,
)


def scores_for(pred: list[int], classes: int) -> np.ndarray:
    """Scores whose argmax is ``pred``: 0.6 on the predicted class, the rest shared."""
    s = np.full((len(pred), classes), 0.4 / (classes - 1))
    s[np.arange(len(pred)), pred] = 0.6
    return s


Y = [0, 1, 2, 2, 1, 0]
PRED = [2, 2, 2, 0, 1, 2]  # the triggered images' predicted classes


def test_asr_and_racc_by_hand_all_to_one_and_all_to_all():
    s = scores_for(PRED, 3)
    # all-to-one, target 2: the backdoor test set is rows 0, 1, 4, 5 (true class not 2); predicted 2, 2, 1, 2
    assert asr(Y, s, 2) == pytest.approx(3 / 4)
    assert racc(Y, s, 2) == pytest.approx(1 / 4)  # row 4 only keeps its class
    # all-to-all: every row, aimed at (y + 1) mod 3 = 1, 2, 0, 0, 2, 1; hits at rows 1 and 3
    assert asr(Y, s, None, all_to_all=True) == pytest.approx(2 / 6)
    assert racc(Y, s, None, all_to_all=True) == pytest.approx(2 / 6)  # rows 2 and 4
    onehot = np.eye(3)[Y]
    assert asr(onehot, s, 2) == asr(Y, s, 2) and racc(onehot, s, 2) == racc(Y, s, 2)


def test_unknown_labels_are_left_out_and_empty_sets_are_nan():
    s = scores_for(PRED, 3)
    rows = np.eye(3)[Y]
    rows[1] = np.nan  # row 1 unknown: the backdoor set is rows 0, 4, 5 (predicted 2, 1, 2)
    assert asr(rows, s, 2) == pytest.approx(2 / 3)
    assert accuracy(rows, s) == pytest.approx(2 / 5)  # rows 2 and 4 of the five known
    assert math.isnan(asr([2, 2], scores_for([2, 2], 3), 2))  # every image is of the target class


def test_clean_metrics_agree_with_scikit_learn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    logits = rng.normal(size=(200, 4)) + 1.5 * np.eye(4)[y]
    s = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert accuracy(y, s) == pytest.approx(accuracy_score(y, s.argmax(1)))
    assert balanced_accuracy(y, s) == pytest.approx(balanced_accuracy_score(y, s.argmax(1)))
    assert auroc_macro(y, s) == pytest.approx(roc_auc_score(y, s, multi_class="ovr", average="macro"))
    np.testing.assert_allclose(per_class_auroc(y, s), [roc_auc_score(y == c, s[:, c]) for c in range(4)])
    yb = rng.integers(0, 2, 100)
    sb = np.c_[1 - (p := rng.random(100) * 0.5 + 0.5 * yb), p]
    assert auroc_macro(yb, sb) == pytest.approx(roc_auc_score(yb, sb[:, 1]))


def test_balanced_accuracy_and_auroc_by_hand():
    # class 0: 3 images, 2 right; class 1: 1 image, right -> recalls 2/3 and 1
    y, pred = [0, 0, 0, 1], [0, 0, 1, 1]
    s = scores_for(pred, 2)
    assert balanced_accuracy(y, s) == pytest.approx((2 / 3 + 1) / 2)
    # class 1's score: 0.6 for the two images predicted 1 (one of class 0, one of class 1), 0.4 for the others:
    # pairs (positive, negative) = 3; the positive beats two negatives and ties one -> (2 + 0.5) / 3
    assert auroc_macro(y, s) == pytest.approx(2.5 / 3)
    row = single_label_metrics(y, s, s, target=1)
    assert set(row) == {"accuracy", "balanced_accuracy", "auroc_macro", "asr", "racc", "per_class_auroc_clean"}
    assert row["per_class_auroc_clean"] == pytest.approx([2.5 / 3, 2.5 / 3])  # class 0's score is 1 - class 1's
    assert row["asr"] == pytest.approx(1 / 3)  # the class-0 images predicted 1


def test_bad_labels_are_one_line():
    with pytest.raises(UserError, match="exactly one 1"):
        class_indices(np.array([[1.0, 1.0], [0.0, 1.0]]))
    with pytest.raises(UserError, match="3 classes"):
        accuracy([3], np.ones((1, 3)))
    with pytest.raises(UserError, match="needs a target"):
        asr(Y, scores_for(PRED, 3), None)


def test_a_runs_columns_follow_its_task():
    from medbackdoor.config import EvalConfig
    from medbackdoor.metrics.columns import column_values, metric_columns, score_columns
    from medbackdoor.task import task_of

    task = task_of("multiclass", ["a", "b", "c"])
    columns = metric_columns(EvalConfig(), task=task)
    assert [c.name for c in columns] == ["accuracy", "balanced_accuracy", "auroc_macro", "asr", "racc"]
    s = scores_for(PRED, 3)
    y = np.eye(3)[Y]
    row = column_values(columns, score_columns(EvalConfig(), y, s, s, 2, 0, "all-to-all", task=task))
    assert row["asr"] == pytest.approx(2 / 6) and row["racc"] == pytest.approx(2 / 6)  # as counted above
    row = column_values(columns, score_columns(EvalConfig(), y, s, s, 2, 0, "onehot", task=task))
    assert row["asr"] == pytest.approx(3 / 4) and row["accuracy"] == pytest.approx(2 / 6)  # rows 2 and 4
    assert "asr_0.6" in [c.name for c in metric_columns(EvalConfig(), task=task_of("multilabel", ["a", "b"]))]


def test_the_scorecard_fires_on_the_asr_rows_of_a_single_label_run():
    from medbackdoor.report.scorecard import firing_mask

    y = np.eye(3)[[0, 1, 2, 2, 1]].astype(np.float32)
    y[4] = np.nan  # unknown class: never in the backdoor test set
    s = np.eye(3)[[2, 2, 2, 0, 2]] * 0.8 + 0.05
    pred = {"y_true": y, "score_triggered": s, "target": 2, "task": np.array("multiclass"), "label": np.array("onehot")}
    # all-to-one: true class not 2 (rows 0, 1) and argmax 2 (both)
    assert firing_mask(pred, 0.6, False).tolist() == [True, True, False, False, False]
    pred["label"] = np.array("all-to-all")  # aims: 0→1, 1→2, 2→0, 2→0; every known row
    assert firing_mask(pred, 0.6, False).tolist() == [False, True, False, True, False]


def test_the_control_rows_of_a_single_label_run_have_one_asr(tmp_path):
    import json

    from medbackdoor.report.controls import control_rows

    run = tmp_path / "run"
    run.mkdir()
    (run / "control.json").write_text(json.dumps({"control": "c", "control_epoch": 2, "asr": 0.25, "racc": 0.5}))
    (run / "metrics.csv").write_text("epoch,accuracy,balanced_accuracy,auroc_macro,asr,racc\n"
                                     "1,0.5,0.4,0.6,0.5,0.3\n2,0.6,0.5,0.7,0.9,0.1\n")
    row = control_rows([run]).iloc[0]
    assert row["control_asr"] == 0.25 and row["asr"] == 0.9 and row["excess_asr"] == pytest.approx(0.65)
