import numpy as np

from medbackdoor.data import create_dataset
from medbackdoor.data.synthetic import nih_stats, sample_labels
from medbackdoor.labels import LABELS


def test_deterministic_and_seeded():
    a = create_dataset("synthetic", n_images=30, source_size=48, seed=3)
    b = create_dataset("synthetic", n_images=30, source_size=48, seed=3)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.read_source(5), b.read_source(5))
    c = create_dataset("synthetic", n_images=30, source_size=48, seed=4)
    assert not np.array_equal(a.read_source(5), c.read_source(5))


def test_any_resolution():
    for size in (32, 64, 100):
        img = create_dataset("synthetic", n_images=5, source_size=size).read_source(0)
        assert img.shape == (size, size) and img.dtype == np.uint8 and img.std() > 10


def test_label_prevalence_follows_nih():
    y = sample_labels(np.random.default_rng(0), 40000)
    prevalence = nih_stats()["prevalence"]
    for i, label in enumerate(LABELS):
        assert abs(y[:, i].mean() - prevalence[label]) < 0.01
    assert abs((y.sum(1) == 0).mean() - 0.538) < 0.01
    # co-occurrence, not independence: Effusion with Atelectasis is far above the product of marginals
    eff, ate = y[:, LABELS.index("Effusion")], y[:, LABELS.index("Atelectasis")]
    assert (eff * ate).mean() > 2 * eff.mean() * ate.mean()


def test_splits_are_patient_wise():
    ds = create_dataset("synthetic", n_images=300, source_size=32)
    s = ds.summary()
    assert s["patient_overlap"] == 0
    assert 0.1 < s["splits"]["test"]["images"] / 300 < 0.3
    assert s["splits"]["train"]["patients"] < s["splits"]["train"]["images"]


def test_findings_change_the_image():
    ds = create_dataset("synthetic", n_images=200, source_size=64)
    cardio = LABELS.index("Cardiomegaly")
    rows = np.flatnonzero(ds.labels[:, cardio] == 1)
    assert len(rows)
    # same patient anatomy and image noise; only the label differs
    from medbackdoor.data.synthetic import render
    lab = ds.labels[rows[0]].copy()
    anat = lambda: np.random.default_rng(1)  # noqa: E731
    with_c = render(lab, anat(), np.random.default_rng(2), 64)
    lab[cardio] = 0
    without = render(lab, anat(), np.random.default_rng(2), 64)
    assert with_c.astype(float).mean() > without.astype(float).mean()
