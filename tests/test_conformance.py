"""Registry conformance (the models' is tests/test_models.py): every registered dataset loads the miniature release
it writes itself, and every registered defense goes through ``defend`` on a real (tiny) run and answers with its
kind's contract. The methods come from the registry, not from a list here, so a new defense is tested by being
registered. Only options that make a method quick at this size are set here (fewer steps, fewer epochs); a method
not named below runs at its defaults."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import image_cache_at, module_run

from medbackdoor.data import DATASETS, SPLITS, create_dataset
from medbackdoor.defenses import DEFENSES
from medbackdoor.defenses.base import KINDS
from medbackdoor.defenses.runner import defend

# a holdout of about 40 images (the input defenses need k = 8 reference images in its first half)
TINY = ["dataset.options.n_images=160", "dataset.val_fraction=0.25", "dataset.options.source_size=32", "image_size=32",
        "train.epochs=3", "train.batch_size=16", "eval.epsilons=[0.1]", "trigger.mode=append", "trigger.fraction=0.2"]
# speed only: fewer optimisation steps or epochs than the defaults (a 2-core CPU, seconds a method)
QUICK = {
    "anp": {"steps": 5, "levels": 5},
    "i-bau": {"rounds": 1},
    "ft-sam": {"epochs": 1},
    "abl": {"unlearn_epochs": 1},
    "neural-cleanse": {"images": 8, "steps": 3, "batch_size": 8},
    "fine-pruning": {"epochs": 1},
}
HOLDOUT = 40


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    yield from module_run(tmp_path_factory, "conformance", TINY)


@pytest.fixture(scope="module")
def answered(tiny_run, request):
    """Every defense of the module's parametrisation (built-in and ``--plugin``) asked of the tiny run in one
    request, as a sweep asks a run's defenses: one defense process, the run's features computed once."""
    from conftest import plugins, registered

    from medbackdoor.defenses.runner import DefenseRequest, defend_run
    from medbackdoor.run import Run

    methods = [*registered("defense"), *plugins(request.config, "defense")]
    with image_cache_at(tiny_run.parent / "cache"):
        answers = defend_run(Run(tiny_run), [DefenseRequest(m, holdout=HOLDOUT, options=QUICK.get(m, {}))
                                             for m in methods])
    return dict(zip(methods, answers))


def _finite_or_none(value) -> bool:
    return value is None or (isinstance(value, int | float) and np.isfinite(value))


@pytest.mark.registry("defense", "method")
def test_every_defense_answers_its_kinds_contract(tiny_run, answered, method):
    cls = DEFENSES.get(method)
    assert cls.kind in KINDS and cls.paper and cls.changes  # what it follows and what was changed, for the docs
    summary = answered[method]
    if isinstance(summary, BaseException):
        raise summary
    out = tiny_run / "defenses" / summary.name
    written = json.loads((out / "summary.json").read_text())
    assert written["method"] == method and written["kind"] == cls.kind
    assert json.dumps(summary.options)  # the options it ran with are plain JSON
    manifest = json.loads((tiny_run / "manifest.json").read_text())
    if cls.kind in ("data", "input"):
        detection = written["detection"]
        assert 0 <= detection["auroc"] <= 1
    if cls.kind == "data":
        assert all(0 <= p < manifest["dataset"]["train_samples"] for p in written["flagged_positions"])
    if cls.kind == "input":
        # a conformal threshold may be +inf (too few calibration images for the rate: it flags nothing), never NaN
        assert not np.isnan(written["threshold"]) and 0 < written["calibration_images"] <= HOLDOUT
    if cls.kind == "model":
        assert isinstance(written["backdoored_verdict"], bool)
    if cls.kind == "mitigation":
        assert written["before"].keys() == written["after"].keys() and written["after"]
        assert all(_finite_or_none(v) for v in written["after"].values())
    # the same request is answered from disk
    mtime = (out / "summary.json").stat().st_mtime_ns
    with image_cache_at(tiny_run.parent / "cache"):
        defend(tiny_run, method, holdout=HOLDOUT, options=QUICK.get(method, {}))
    assert (out / "summary.json").stat().st_mtime_ns == mtime


# --- every defense on a single-label run ------------------------------------------------------------------------

SINGLE = ["dataset.name=nih-sample-single", "dataset.options.limit=48", "image_size=32", "train.epochs=3",
          "train.batch_size=16", "trigger.mode=append", "trigger.fraction=0.2", "trigger.target=Infiltration"]


def _train_and_defend(folder, overrides: list[str], request) -> tuple:
    """Train ``quick-real`` with ``overrides`` into ``folder/run`` and ask every defense of it (built-in and
    ``--plugin``) in one request; the run folder and each method's answer."""
    from conftest import plugins, registered

    from medbackdoor.config import load_config
    from medbackdoor.defenses.runner import DefenseRequest, defend_run
    from medbackdoor.run import Run
    from medbackdoor.train import run

    methods = [*registered("defense"), *plugins(request.config, "defense")]
    with image_cache_at(folder / "cache"):
        run(load_config("quick-real", overrides), folder / "run", progress=False)
        answers = defend_run(Run(folder / "run"), [DefenseRequest(m, holdout=HOLDOUT, options=QUICK.get(m, {}))
                                                   for m in methods])
    return folder / "run", dict(zip(methods, answers))


def _check_single_label_answer(folder, answered: dict, method: str, finite_after: bool = True) -> None:
    """The contract on a single-label run: a detection AUROC in [0, 1]; a mitigation's single-label columns."""
    summary = answered[method]
    if isinstance(summary, BaseException):
        raise summary
    written = json.loads((folder / "defenses" / summary.name / "summary.json").read_text())
    kind = DEFENSES.get(method).kind
    if kind in ("data", "input"):
        assert 0 <= written["detection"]["auroc"] <= 1
    if kind == "mitigation":
        assert set(written["after"]) == {"accuracy", "balanced_accuracy", "auroc_macro", "asr", "racc"}
        if finite_after:
            assert all(_finite_or_none(v) for v in written["after"].values())


@pytest.fixture(scope="module", params=["multiclass", "binary"])
def single_answered(tmp_path_factory, request):
    """A tiny multi-class run on real pixels (``nih-sample-single``, 8 classes), or a binary one (No Finding
    against Finding), and every defense asked of it."""
    task = request.param
    target = "Infiltration" if task == "multiclass" else "Finding"
    return _train_and_defend(tmp_path_factory.mktemp("single"),
                             [*SINGLE, f"dataset.options.task={task}", f"trigger.target={target}"], request)


@pytest.mark.slow  # two more tiny runs and every defense on each: about 6 min on 2 cores
@pytest.mark.registry("defense", "method")
def test_every_defense_runs_on_a_single_label_run(single_answered, method):
    """The same contract on a multi-class and a binary run: the defense ran with the run's softmax scores and
    labels, and a mitigation reports the single-label columns before and after."""
    _check_single_label_answer(*single_answered, method)


# --- datasets ----------------------------------------------------------------------------------------------------

@pytest.mark.registry("dataset", "name")
def test_every_dataset_builds_from_its_example_and_keeps_the_contract(name, tmp_path, monkeypatch):
    """Each registered dataset writes its own miniature release (:meth:`ChestXrayDataset.example`) and loads it:
    labels 0/1/NaN in its declared columns, the three splits, no patient in two splits, H×W (or 3×H×W) uint8 sources, a
    fingerprint that is stable and sees a changed table."""
    monkeypatch.setenv("MEDBACKDOOR_CACHE", str(tmp_path / "cache"))
    options = DATASETS.get(name).example(tmp_path / "data")
    dataset = create_dataset(name, **options)
    n, width = len(dataset), len(dataset.label_names)
    assert n > 0 and dataset.labels.shape == (n, width) and width == len(set(dataset.label_names))
    known = dataset.labels[~np.isnan(dataset.labels)]
    assert np.isin(known, (0.0, 1.0)).all()
    dataset.task.check_labels(dataset.labels)  # one-hot rows for a single-label task
    assert set(dataset.splits) <= set(SPLITS) and all(len(dataset.split_indices(s)) for s in ("train", "test"))
    summary = dataset.summary()
    assert json.dumps(summary) and summary["images"] == n
    if dataset.has_patient_ids:
        assert summary["patient_overlap"] == 0
    for i in (0, n - 1):
        image = dataset.read_source(i)
        # H×W gray, or 3×H×W RGB (channel first) for a colour dataset
        shape = image.shape if dataset.channels == 1 else image.shape[1:]
        assert image.ndim == (2 if dataset.channels == 1 else 3) and image.dtype == np.uint8 and min(shape) >= 8
        assert dataset.channels == 1 or image.shape[0] == dataset.channels
    again = create_dataset(name, **options)
    assert again.fingerprint() == dataset.fingerprint()
    fewer = create_dataset(name, **{**options, "limit": 2}) if "limit" in DATASETS.options(name) else None
    if fewer is not None:
        assert len(fewer) < n and fewer.fingerprint() != dataset.fingerprint()


# --- every defense on a colour run ------------------------------------------------------------------------------

def _derma_file(folder, size=28, n=(200, 60, 60), seed=0):
    """A DermaMNIST-layout file of random RGB pixels (N×S×S×3, channel last, as MedMNIST stores colour) with a
    weak per-class colour cue, N×1 class indices."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, count in zip(SPLITS, n):
        y = rng.integers(0, 7, (count, 1))
        pixels = rng.integers(60, 200, (count, size, size, 3)).astype(np.int16)
        pixels[..., 0] += (8 * y[:, 0])[:, None, None]
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = pixels.astype(np.uint8), y.astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(folder / "dermamnist.npz", **arrays)
    return folder


COLOUR = ["dataset.name=dermamnist", "dataset.options.size=28", "dataset.options.download=false", "image_size=32",
          "train.epochs=2", "train.batch_size=16", "trigger.kind=patch", "trigger.size=4", "trigger.options.channels=3",
          "trigger.mode=append", "trigger.fraction=0.2", "trigger.target=melanoma"]


@pytest.fixture(scope="module")
def colour_answered(tmp_path_factory, request):
    """A tiny colour (RGB) multi-class run in DermaMNIST's layout, a colour patch trigger, every defense asked."""
    folder = tmp_path_factory.mktemp("colour")
    root = _derma_file(folder / "medmnist")
    return _train_and_defend(folder, [*COLOUR, f"dataset.root={root}"], request)


@pytest.mark.slow  # a colour run and every defense: about 7 min on 2 cores
@pytest.mark.registry("defense", "method")
def test_every_defense_runs_on_a_colour_run(colour_answered, method):
    """The contract again on 3×H×W images (the colour patch is refused on anything else): every defense
    answered."""
    _check_single_label_answer(*colour_answered, method, finite_after=False)
