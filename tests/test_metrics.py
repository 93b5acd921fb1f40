import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medbackdoor.errors import UserError
from medbackdoor.metrics import (
    asr,
    auroc_nn,
    auroc_tn,
    auroc_tt,
    backdoor_metrics,
    mean_auroc,
    micro_auroc,
    mixed_auroc,
    mixed_rows,
    per_class_auroc,
)


@pytest.fixture
def preds():
    rng = np.random.default_rng(0)
    y = (rng.random((200, 14)) < 0.15).astype(int)
    clean = np.clip(0.6 * y + rng.random((200, 14)) * 0.5, 0, 1)
    trig = clean.copy()
    trig[:, 0] = np.clip(0.5 + rng.random(200) * 0.5, 0, 1)
    return y, clean, trig


def test_asr_hand_computed():
    y = np.array([[0, 1], [0, 0], [1, 0], [0, 0]])
    s = np.array([[0.6, 0], [0.9, 0], [0.1, 0], [0.59, 0]])
    assert asr(y, s, 0, 0.6) == pytest.approx(2 / 3)  # rows 0, 1, 3 lack t; 0.6 and 0.9 reach p
    assert asr(y, s, 0, 0.6, strict=True) == pytest.approx(1 / 3)  # only 0.9 is strictly above
    assert np.isnan(asr(np.ones((2, 2)), s[:2], 0))


def test_micro_auroc_equals_sklearn_micro(preds):
    y, clean, trig = preds
    assert micro_auroc(y, clean) == pytest.approx(roc_auc_score(y, clean, average="micro"))
    assert auroc_nn(y, clean) == pytest.approx(roc_auc_score(y.ravel(), clean.ravel()))
    assert auroc_tn(y, trig) == pytest.approx(roc_auc_score(y, trig, average="micro"))


def test_auroc_tt_uses_one_hot_infected_labels(preds):
    _, _, trig = preds
    infected = np.zeros_like(trig, dtype=int)
    infected[:, 0] = 1
    assert auroc_tt(trig, 0) == pytest.approx(roc_auc_score(infected.ravel(), trig.ravel()))
    perfect = np.zeros((5, 3))
    perfect[:, 1] = 0.9
    assert auroc_tt(perfect, 1) == 1.0


def test_per_class_nan_for_single_valued_class(preds):
    y, clean, _ = preds
    y = y.copy()
    y[:, 13] = 0
    values = per_class_auroc(y, clean)
    assert np.isnan(values[13])
    assert values[2] == pytest.approx(roc_auc_score(y[:, 2], clean[:, 2]))
    assert mean_auroc(y, clean) == pytest.approx(np.nanmean(values))


def test_mixed_auroc_independent_computation(preds):
    y, clean, trig = preds
    rows = mixed_rows(len(y), 0.1, seed=4)
    assert len(rows) == 20 and len(set(rows.tolist())) == 20
    mixed = clean.copy()
    mixed[rows] = trig[rows]
    assert mixed_auroc(y, clean, trig, 0.1, seed=4) == pytest.approx(roc_auc_score(y.ravel(), mixed.ravel()))
    assert mixed_auroc(y, clean, trig, 0.0) == pytest.approx(auroc_nn(y, clean))
    assert mixed_auroc(y, clean, trig, 1.0) == pytest.approx(auroc_tn(y, trig))
    with pytest.raises(UserError):
        mixed_rows(10, 1.5)


def test_backdoor_metrics_keys(preds):
    y, clean, trig = preds
    out = backdoor_metrics(y, clean, trig, 0, (0.6, 0.9), (0.5,))
    assert set(out["asr"]) == {"0.6", "0.9"} and set(out["auroc_mix"]) == {"0.5"}
    assert out["asr"]["0.6"] >= out["asr"]["0.9"]
    with pytest.raises(UserError):
        backdoor_metrics(y, clean, trig, 0, (1.2,))


def test_shape_mismatch():
    with pytest.raises(UserError):
        micro_auroc(np.zeros((3, 2)), np.zeros((3, 3)))
