"""Task types: the losses against formulas written out here, the label rules and the poisoning policies."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medbackdoor.data.base import ChestXrayDataset
from medbackdoor.errors import UserError
from medbackdoor.task import task_of

LOGITS = np.array([[2.0, -1.0, 0.5], [0.0, 1.5, -0.5], [1.0, 1.0, 1.0], [-2.0, 0.3, 0.7]])


def test_single_label_loss_is_the_cross_entropy_of_the_class():
    task = task_of("multiclass", ["a", "b", "c"])
    y = np.array([[1, 0, 0], [0, 0, 1], [np.nan] * 3, [0, 1, 0]], np.float32)  # row 2: unknown
    logsumexp = np.log(np.exp(LOGITS).sum(1))
    expected = sum(logsumexp[i] - LOGITS[i, c] for i, c in ((0, 0), (1, 2), (3, 1))) / 4
    got = task.loss(torch.tensor(LOGITS, dtype=torch.float32), torch.tensor(y))
    assert float(got) == pytest.approx(expected, rel=1e-5)
    p = task.activation(torch.tensor(LOGITS)).numpy()
    np.testing.assert_allclose(p, np.exp(LOGITS) / np.exp(LOGITS).sum(1, keepdims=True), rtol=1e-6)


def test_multi_label_loss_is_the_bce_summed_over_known_findings():
    task = task_of("multilabel", ["a", "b", "c"])
    y = np.array([[1, 0, 1], [0, np.nan, 0], [1, 1, 1], [0, 0, 0]], np.float32)
    sig = 1 / (1 + np.exp(-LOGITS))
    terms = -(np.nan_to_num(y) * np.log(sig) + (1 - np.nan_to_num(y)) * np.log(1 - sig))
    expected = np.where(np.isfinite(y), terms, 0).sum() / 4
    got = task.loss(torch.tensor(LOGITS, dtype=torch.float32), torch.tensor(y))
    assert float(got) == pytest.approx(expected, rel=1e-5)
    np.testing.assert_allclose(task.activation(torch.tensor(LOGITS)).numpy(), sig, rtol=1e-6)


def test_policies_write_the_labels_by_hand():
    task = task_of("multiclass", ["a", "b", "c"])
    y = np.eye(3, dtype=np.float32)[[0, 1, 2, 2]]
    np.testing.assert_array_equal(task.infected(y, 1, "onehot"), np.eye(3)[[1, 1, 1, 1]])
    np.testing.assert_array_equal(task.infected(y, 1, "all-to-all"), np.eye(3)[[1, 2, 0, 0]])  # y -> y + 1 mod 3
    np.testing.assert_array_equal(task.infected(y, 1, "keep"), y)
    with pytest.raises(UserError, match="onehot, all-to-all, keep for a multiclass task"):
        task.infected(y, 1, "add")
    multi = task_of("multilabel", ["a", "b", "c"])
    np.testing.assert_array_equal(multi.infected(np.array([1, 0, 1.0]), 1, "add"), [1, 1, 1])
    with pytest.raises(UserError, match="for a multilabel task"):
        multi.infected(y, 1, "all-to-all")


def test_label_rows_and_predictions():
    task = task_of("binary", ["normal", "pneumonia"])
    task.check_labels(np.array([[1, 0], [np.nan, np.nan], [0, 1]]))
    for bad in ([[1, 1]], [[0, 0]], [[1, np.nan]], [[0.5, 0.5]]):
        with pytest.raises(UserError, match="one-hot rows"):
            task.check_labels(np.array(bad, np.float32))
    np.testing.assert_array_equal(task.predicted(np.array([[0.7, 0.3], [0.2, 0.8]])), [[1, 0], [0, 1]])
    np.testing.assert_array_equal(task.encode([1, -1, 0])[[0, 2]], [[0, 1], [1, 0]])
    assert np.isnan(task.encode([1, -1, 0])[1]).all()
    multi = task_of("multilabel", ["a", "b"])
    np.testing.assert_array_equal(multi.predicted(np.array([[0.7, 0.5], [0.2, 0.1]])), [[1, 1], [0, 0]])
    with pytest.raises(UserError, match="0, 1 or NaN"):
        multi.check_labels(np.array([[2.0, 0.0]]))


def test_task_of_refuses_what_no_task_is():
    for kind, names, message in (("regression", ["a", "b"], "task must be one of"),
                                 ("binary", ["a", "b", "c"], "exactly two classes"),
                                 ("multiclass", ["a"], "at least two classes")):
        with pytest.raises(UserError, match=message):
            task_of(kind, names)


def test_a_dataset_declares_its_task_and_its_labels_are_checked_against_it():
    class Cells(ChestXrayDataset):
        name, label_names, task_kind = "cells", ("red", "white", "platelet"), "multiclass"

        def __init__(self, labels):
            self._set_table(["x", "y"], labels, ["p", "q"], ["train", "test"])

        def read_source(self, index):
            return np.zeros((4, 4), np.uint8)

        def source_fingerprint(self):
            return {"dataset": self.name}

    assert Cells(np.eye(3)[[0, 2]]).task.single_label
    with pytest.raises(UserError, match="cells: labels of a multiclass task must be one-hot rows"):
        Cells(np.array([[1, 1, 0], [0, 0, 1]]))
