"""Run-folder safety, flat memory, fp32 scoring, cache locking, seeds and explain: the hardening checks."""

import hashlib
import multiprocessing
import time

import numpy as np
import pytest
import torch

import medbackdoor.train.loop as loop
import medbackdoor.train.runner as runner
from medbackdoor.config import load_config
from medbackdoor.data.base import ChestXrayDataset
from medbackdoor.data.cache import cache_path, ensure_cache
from medbackdoor.data.preprocess import Preprocess
from medbackdoor.data.views import ImageRows
from medbackdoor.experiment import build_run_data
from medbackdoor.labels import LABELS
from medbackdoor.poison import TEST_STREAM, TRAIN_STREAM, ImageSplit, PoisonedDataset, triggered_images
from medbackdoor.rundir import RunDir
from medbackdoor.train import run
from medbackdoor.triggers import SquareTrigger

TINY = ["dataset.options.n_images=100", "dataset.options.source_size=32", "image_size=32", "train.batch_size=16",
        "eval.epsilons=[0.1,0.5]"]
VOLATILE = {"seconds", "train_images_per_s"}


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDBACKDOOR_CACHE", str(tmp_path / "cache"))
    return lambda *extra: load_config(overrides=[*TINY, *extra])


def _stable(rows):
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows]


# --- item 3: a kill at any write point resumes from the newest complete epoch --------------------------------------

class Killed(BaseException):
    """Stands for SIGKILL: nothing after the write point runs."""


WRITE_POINTS = ("predictions", "checkpoint", "metrics", "manifest", "prune")


def _kill_after(monkeypatch, point: str, epoch: int):
    """Patch the run's writes so the run dies right after ``point`` of ``epoch``."""
    state = {"epoch": 0}

    def wrap(name, real, owner, attr):
        def wrapped(*args, **kwargs):
            result = real(*args, **kwargs)
            if name == "predictions":
                state["epoch"] += 1
            if name == point and state["epoch"] == epoch:
                raise Killed(f"killed after {point} of epoch {epoch}")
            return result
        monkeypatch.setattr(owner, attr, wrapped)

    wrap("predictions", runner.save_predictions, runner, "save_predictions")
    wrap("checkpoint", runner.save_checkpoint, runner, "save_checkpoint")
    wrap("metrics", RunDir.write_metrics, RunDir, "write_metrics")
    wrap("prune", runner._prune_checkpoints, runner, "_prune_checkpoints")
    real_manifest = RunDir.write_manifest

    def manifest(self, data):  # the failure handler's own manifest write must not count as the kill point
        real_manifest(self, data)
        if point == "manifest" and data.epochs_done == epoch and data.status == "running":
            raise Killed("killed after the manifest")
    monkeypatch.setattr(RunDir, "write_manifest", manifest)


@pytest.mark.slow
def test_kill_at_every_write_point_resumes_from_newest_complete_epoch(tiny, tmp_path, monkeypatch):
    config = tiny("train.epochs=3", "train.keep_checkpoints=[]", "dataset.options.n_images=60")
    run(config, tmp_path / "ref", progress=False)
    reference = _stable(RunDir(tmp_path / "ref").metrics())
    assert RunDir(tmp_path / "ref").checkpoint_epochs() == [3]  # pruning keeps only the latest
    for point in WRITE_POINTS:
        out = tmp_path / point
        with monkeypatch.context() as m:
            _kill_after(m, point, epoch=2)
            with pytest.raises(Killed):
                run(config, out, progress=False)
        folder = RunDir(out)
        expected = 2 if point in ("metrics", "manifest", "prune") else 1
        assert folder.last_complete_epoch() == expected, point
        assert folder.checkpoint_path(expected).is_file(), point
        run(config, out, resume=True, progress=False)
        assert _stable(folder.metrics()) == reference, point
        assert folder.checkpoint_epochs() == [3], point


# --- item 4: one model of a run folder ------------------------------------------------------------------------------

def test_rundir_reads_what_run_wrote_and_one_list_of_neutral_keys(tiny, tmp_path):
    from medbackdoor.config import NEUTRAL_KEYS
    from medbackdoor.report.aggregate import NOT_A_CONDITION

    out = tmp_path / "run"
    run(tiny("train.epochs=2"), out, progress=False)
    folder = RunDir(out)
    assert folder.config() == tiny("train.epochs=2")
    assert folder.status() == "complete" and folder.last_complete_epoch() == 2
    assert [int(r["epoch"]) for r in folder.metrics()] == [1, 2]
    assert folder.extremes()["auroc_nn"]["max"] >= folder.extremes()["auroc_nn"]["min"]
    assert set(folder.load_predictions(2)) >= {"y_true", "score_clean", "score_triggered"}
    model = folder.load_model(2)
    state = torch.load(folder.checkpoint_path(2), weights_only=True)["model"]
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert NOT_A_CONDITION == NEUTRAL_KEYS | {"train.seed"}
    assert not hasattr(runner, "IGNORED_ON_RESUME")
    # a neutral key may change on resume; a result key may not
    run(tiny("train.epochs=2", "train.workers=0", "eval.batch_size=7"), out, resume=True, progress=False)
    from medbackdoor.errors import UserError
    with pytest.raises(UserError, match="trigger.size"):
        run(tiny("train.epochs=2", "trigger.size=4"), out, resume=True, progress=False)


# --- item 6: memory: labels without images, triggers stamped on read, test set read in chunks -------------------------

def _split(n=40, size=32, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
    labels = (rng.random((n, 14)) < 0.2).astype(np.float32)
    patients = np.arange(n).astype(str)
    return images, ImageSplit(images, labels, patients, np.arange(5, n))


@pytest.mark.parametrize("mode", ["replace", "append"])
def test_stamped_on_read_equals_precomputed_and_labels_need_no_images(mode):
    images, split = _split()
    trigger = SquareTrigger(3, location="random")
    poisoned = PoisonedDataset(split, trigger, 0.4, "Effusion", mode, seed=7, label_names=LABELS)
    rows = split.indices[poisoned.order]
    expected, _ = triggered_images(None, rows, images[rows], trigger, "input", 7, TRAIN_STREAM)
    got = {s["index"]: s["image"] for s in (poisoned[i] for i in range(len(poisoned))) if s["poisoned"]}
    assert sorted(got) == sorted(rows.tolist())
    for k, r in enumerate(rows):
        np.testing.assert_array_equal(got[int(r)], expected[k])
    labels = np.stack([poisoned[i]["labels"] for i in range(len(poisoned))])

    def no_images(*_):
        raise AssertionError("labels_array read an image")
    split.__class__ = type("NoRead", (ImageSplit,), {"__getitem__": no_images})
    np.testing.assert_array_equal(poisoned.labels_array(), labels)


def test_run_data_keeps_no_image_arrays_in_memory(tiny):
    config = tiny("trigger.location=random")
    data = build_run_data(config, progress=False)
    assert data.train.triggered is None  # input stage: stamped when read
    assert isinstance(data.test.clean, ImageRows) and not isinstance(data.test.triggered, np.ndarray)
    assert isinstance(data.images, np.memmap)
    rows = data.test.rows
    expected, survived = triggered_images(data.dataset, rows, np.asarray(data.images[rows]), data.trigger, "input",
                                          config.attack_seed, TEST_STREAM)
    np.testing.assert_array_equal(data.test.triggered[0:len(rows)], expected)
    np.testing.assert_array_equal(data.test.survived, survived)
    source = build_run_data(tiny("trigger.stage=source"), progress=False)
    assert isinstance(source.train.triggered, np.memmap) and isinstance(source.test.triggered, np.memmap)


# --- item 7: scores at full precision -------------------------------------------------------------------------------

def test_evaluation_never_runs_under_autocast(tiny, tmp_path, monkeypatch):
    import inspect

    calls = []
    real = loop.autocast

    def spy(device, enabled):
        calls.append((inspect.stack()[1].function, enabled))
        return real(device, enabled)
    monkeypatch.setattr(loop, "autocast", spy)
    run(tiny("train.epochs=1", "train.amp=true"), tmp_path / "run", progress=False)
    assert ("train_epoch", True) in calls
    assert all(fn == "train_epoch" for fn, enabled in calls if enabled)


# --- item 8: the cache is built once --------------------------------------------------------------------------------

class SlowDataset(ChestXrayDataset):
    name = "slow"
    label_names = LABELS

    def __init__(self, n: int = 24) -> None:
        self._set_table([f"{i}.png" for i in range(n)], np.zeros((n, 14)), [str(i) for i in range(n)],
                        ["train"] * n)

    def read_source(self, index: int) -> np.ndarray:
        time.sleep(0.02)
        return np.random.default_rng(index).integers(0, 256, (40, 40), dtype=np.uint8)

    def source_fingerprint(self) -> dict:
        return {"slow": len(self)}


def _build(cache_dir, barrier, queue):
    dataset = SlowDataset()
    path = cache_path(dataset, 32, Preprocess(), cache_dir)
    barrier.wait()
    built = ensure_cache(dataset, 32, Preprocess(), path, workers=0, progress=False)
    queue.put((built, hashlib.sha256(np.load(path).tobytes()).hexdigest()))


def test_two_builders_at_once_build_the_cache_once(tmp_path):
    ctx = multiprocessing.get_context("fork")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_build, args=(tmp_path, barrier, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert sorted(built for built, _ in results) == [False, True]
    assert results[0][1] == results[1][1]
    assert len(list(tmp_path.glob("*.npy"))) == 1


# --- item 9: seeds mean what the README says ------------------------------------------------------------------------

def test_trigger_seed_holds_the_attack_fixed_across_training_seeds(tiny):
    def attack(*extra):
        data = build_run_data(tiny("trigger.location=random", *extra), progress=False)
        return data.train.order.tolist(), data.test.triggered[0:8]

    a0, a1 = attack("train.seed=0", "trigger.seed=5"), attack("train.seed=1", "trigger.seed=5")
    assert a0[0] == a1[0] and np.array_equal(a0[1], a1[1])
    f0, f1 = attack("train.seed=0"), attack("train.seed=1")  # default: the attack follows train.seed
    assert f0[0] != f1[0] and not np.array_equal(f0[1], f1[1])
    assert attack("train.seed=5")[0] == a0[0]
    assert load_config(overrides=["trigger.seed=3"]).attack_seed == 3
    assert load_config(overrides=["train.seed=4"]).attack_seed == 4


def test_deterministic_switches_torch_to_deterministic_kernels_and_back(tiny, tmp_path, monkeypatch):
    seen = []
    real = loop.train_epoch

    def spy(*args, **kwargs):
        seen.append(torch.are_deterministic_algorithms_enabled())
        return real(*args, **kwargs)
    monkeypatch.setattr(runner, "train_epoch", spy)
    before = torch.are_deterministic_algorithms_enabled()
    run(tiny("train.epochs=1", "train.deterministic=true"), tmp_path / "run", progress=False)
    assert seen == [True] and torch.are_deterministic_algorithms_enabled() == before


# --- item 10: explain reuses the run --------------------------------------------------------------------------------

def test_explain_builds_only_the_test_split(tiny, tmp_path, monkeypatch):
    import medbackdoor.experiment as data_module
    from medbackdoor.explain.run_explain import explain_run

    run(tiny("train.epochs=1"), tmp_path / "run", progress=False)

    def no_training_set(*args, **kwargs):
        raise AssertionError("explain built the poisoned training set")
    monkeypatch.setattr(data_module, "_poison", no_training_set)
    monkeypatch.setattr(data_module, "build_run_data", no_training_set)
    import medbackdoor.explain.run_explain as explain_module
    titles = []
    real_save = explain_module.save_figure

    def capture(fig, *args, **kwargs):
        titles.extend(ax.get_title() for ax in fig.axes if ax.get_title())
        return real_save(fig, *args, **kwargs)
    monkeypatch.setattr(explain_module, "save_figure", capture)
    result = explain_run(tmp_path / "run", images=16)
    assert result["images"] == 16 and result["map_sizes"] == {"last": (1, 1), "middle": (2, 2)}
    # item 12: each column says how coarse its map is
    assert titles == ["clean, last layer (1×1 map)", "infected, last layer (1×1 map)",
                      "clean, middle layer (2×2 map)", "infected, middle layer (2×2 map)"]
