"""A config turned into the objects a run, a defense, an explanation and a control scoring read: the dataset, its
cached images, the trigger, the poisoned training set and the triggered test set (below ``train/``, so that
``defenses/``, ``explain/`` and ``study/`` use it without depending on the training code).

Memory stays flat in the dataset size: images are read from the cache memmap a batch at a time; input-stage
triggers are stamped when an image is read (seeded per image, so the pixels are those a precomputed array
would hold); only source-stage infected images are precomputed, into a uint8 memmap next to the cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from medbackdoor._io import read_positions
from medbackdoor.config import RunConfig
from medbackdoor.data import DATASETS, ChestXrayDataset, Preprocess
from medbackdoor.data.cache import load_images
from medbackdoor.data.views import ImageRows
from medbackdoor.errors import UserError
from medbackdoor.labels import label_index
from medbackdoor.poison import (
    TEST_STREAM,
    TRAIN_STREAM,
    ImageSource,
    ImageSplit,
    PoisonedDataset,
    Stamp,
    triggered_view,
)
from medbackdoor.triggers import SHARED_OPTIONS, TRIGGERS, Trigger

DATA_SEED = 0  # splits and subsets stay the same across training seeds


@dataclass
class TestData:
    """The test split as a run scores it: clean and triggered inputs as lazy views (``view[lo:hi]``)."""

    rows: np.ndarray
    labels: np.ndarray
    clean: ImageRows
    triggered: object
    survived: np.ndarray
    carriers: np.ndarray | None = None  # label-only trigger: the test rows that carry it (None: every row)
    label_names: tuple[str, ...] = ()  # the dataset's label columns
    condition: np.ndarray | None = None  # source-specific trigger: the rows where it should fire (None: every row)
    task: object = None  # the dataset's :class:`~medbackdoor.task.Task`

    def __len__(self) -> int:
        return len(self.rows)


@dataclass
class RunData:
    dataset: ChestXrayDataset
    images: np.ndarray
    train: PoisonedDataset
    val: ImageSplit
    val_poisoned: PoisonedDataset | None
    test: TestData
    target: int
    trigger: Trigger
    survival: dict

    def counts(self) -> dict:
        return {"train": len(self.train.base), "train_samples": len(self.train), "poisoned": len(self.train.poisoned),
                "val": len(self.val), "test": len(self.test), "missing": int(self.dataset.missing)}

    def poisoning(self) -> dict:
        """The label policy, how many images could be and were poisoned (capped by the candidates), and how many
        became cross samples (clean labels, not poisoned; capped by the images left unpoisoned)."""
        t = self.train
        dropped = {}
        if t.kept is not None:  # train.drop: samples left out (a cleanse-and-retrain run)
            dropped = {"dropped": t.full_length() - len(t.kept), "poisoned_kept": int(t.poisoned_mask().sum()),
                       "cross_kept": int(t.cross_mask().sum())}
        return {"label": t.label, "candidates": int(t.candidates), "requested": int(t.requested),
                "poisoned": len(t.order), "capped": len(t.order) < t.requested,
                "cross_requested": int(t.cross_requested), "cross": len(t.cross), **dropped,
                "test_carriers": None if self.test.carriers is None else int(self.test.carriers.sum()),
                "test_condition": None if self.test.condition is None else int(self.test.condition.sum())}


def build_dataset(config: RunConfig) -> ChestXrayDataset:
    """The configured dataset: ``dataset.options`` checked against the dataset's own options (one line for an
    unknown one), the framework's ``root``, ``limit``, ``seed``, ``val_fraction`` and ``split`` passed where the
    dataset takes them."""
    cfg = config.dataset
    given = {"root": cfg.root, "limit": cfg.limit, "val_fraction": cfg.val_fraction, "seed": DATA_SEED}
    if cfg.split != "auto":
        given["split"] = cfg.split
    return DATASETS.create_checked(cfg.name, dict(cfg.options), f"dataset {cfg.name}", given=given)


def build_trigger(config: RunConfig, label_names: Sequence[str], task=None) -> tuple[Trigger, int]:
    """The configured trigger and the target class index among the dataset's ``label_names`` (the trigger is
    checked against the model input size, a label-only trigger's findings against the label names, the label
    policy against the dataset's ``task`` when given)."""
    t = config.trigger
    if task is not None:
        task.check_policy(t.label)
    shared = {k: getattr(t, k) for k in SHARED_OPTIONS if getattr(t, k) is not None}  # unset: the trigger's default
    trigger = TRIGGERS.create_checked(t.kind, dict(t.options), f"trigger {t.kind}", given=shared)
    trigger.bind_labels(tuple(label_names))
    if t.stage == "input":
        trigger.check_fits(config.image_size, config.image_size)
    if not trigger.changes_pixels and t.label != "add":
        raise UserError(f"trigger {t.kind} changes no pixel: it poisons by adding the target to the labels; "
                        f"set trigger.label=add (got {t.label})")
    return trigger, label_index(t.target, label_names)


def _preprocess(config: RunConfig) -> Preprocess:
    return Preprocess(crop=config.preprocess.crop, resize=config.preprocess.resize)


def _split(dataset: ChestXrayDataset, images: np.ndarray, name: str) -> ImageSplit:
    part = ImageSplit(images, dataset.labels, dataset.patients, dataset.split_indices(name))
    if len(part) == 0:
        raise UserError(f"the {name} split of dataset {dataset.name} is empty; use more images")
    return part


def build_test_data(config: RunConfig, dataset: ChestXrayDataset | None = None, images: np.ndarray | None = None,
                    trigger: Trigger | None = None, workers: int | None = None, progress: bool = False) -> TestData:
    """The test split, clean and triggered (all that ``explain`` needs: no training set is built)."""
    dataset = dataset or build_dataset(config)
    prep = _preprocess(config)
    if images is None:
        images = load_images(dataset, config.image_size, prep, config.cache_dir, workers, progress)
    trigger = trigger or build_trigger(config, dataset.label_names)[0]
    rows = _split(dataset, images, "test").indices
    clean = ImageRows(images, rows)
    if not trigger.changes_pixels:  # a label-only trigger: the carriers are the triggered images, as they are
        return TestData(rows, dataset.labels[rows], clean, clean, np.zeros(len(rows), bool),
                        trigger.carriers(dataset.labels[rows]), tuple(dataset.label_names), task=dataset.task)
    source = ImageSource(dataset, images, config.image_size, prep, config.cache_dir, workers, progress)
    triggered, survived = triggered_view(source, rows, Stamp(trigger, config.trigger.stage, config.attack_seed,
                                                             TEST_STREAM))
    return TestData(rows, dataset.labels[rows], clean, triggered, survived, label_names=tuple(dataset.label_names),
                    condition=trigger.condition(dataset.labels[rows]), task=dataset.task)


def build_run_data(config: RunConfig, workers: int | None = None, progress: bool = True) -> RunData:
    """Load (or build) the cache, poison the training split and trigger the whole test split."""
    dataset = build_dataset(config)
    images = load_images(dataset, config.image_size, _preprocess(config), config.cache_dir, workers, progress)
    trigger, target = build_trigger(config, dataset.label_names, dataset.task)
    seed = config.attack_seed
    split = {s: _split(dataset, images, s) for s in ("train", "val", "test")}
    train, train_survival = _poison(config, dataset, images, split["train"], trigger, seed, workers, progress)
    if config.train.drop:
        train.drop(read_positions(config.train.drop))
    val_poisoned = None
    if config.train.poisoned_val:
        val_poisoned, _ = _poison(config, dataset, images, split["val"], trigger, seed + 1, workers, progress)
    test = build_test_data(config, dataset, images, trigger, workers, progress)
    pixel = trigger.changes_pixels and len(test)
    survival = {"train": train_survival, "test": float(test.survived.mean()) if pixel else float("nan")}
    return RunData(dataset, images, train, split["val"], val_poisoned, test, target, trigger, survival)


def _poison(config: RunConfig, dataset, images, split: ImageSplit, trigger, seed: int, workers, progress):
    """The poisoned split (or the clean split when ρ = 0) and the share of poisoned images the trigger survived."""
    t = config.trigger
    carriers = trigger.carriers(split.labels_array())
    if carriers is None:  # a source-specific trigger poisons only the images where it should fire
        carriers = trigger.condition(split.labels_array())
    candidates = None if carriers is None else np.flatnonzero(carriers)
    poisoned = PoisonedDataset(split, trigger, t.fraction, t.target, t.mode, seed, label=t.label, candidates=candidates,
                               label_names=dataset.label_names, task=dataset.task)
    if t.fraction == 0 or not len(poisoned.order) or not trigger.changes_pixels:
        return poisoned, float("nan")
    rows = split.indices[poisoned.order]
    source = ImageSource(dataset, images, config.image_size, _preprocess(config), config.cache_dir, workers, progress)
    view, survived = triggered_view(source, rows, Stamp(trigger, t.stage, seed, TRAIN_STREAM))
    if t.stage == "source":
        poisoned = PoisonedDataset(split, trigger, t.fraction, t.target, t.mode, seed, triggered=view, label=t.label,
                                   candidates=candidates, label_names=dataset.label_names, task=dataset.task)
    return poisoned, float(survived.mean())


# --- the attack record: what the attacker did, written into the run folder when the run is made --------------------

def attack_record(data: RunData, config: RunConfig) -> dict[str, np.ndarray]:
    """What the attack did to this run, as arrays (``RUN/attack.npz``; it scores defenses and is never shown to one).

    Keys: ``poisoned`` and ``cross`` (per training sample as trained: infected, or a cross sample with its clean
    label), ``sample_positions`` (each sample's position in the training split), ``target`` (the label index),
    ``trigger_mask`` (H×W bool at the model input where the trigger has one fixed, localised mask, else 0×0) with
    ``trigger_mask_reason`` (why not), and ``test_rows`` / ``test_survived`` (did the trigger change each test input).
    """
    mask, reason = trigger_footprint(data, config)
    train = data.train
    cross = train.cross_mask() if hasattr(train, "cross_mask") else np.zeros(len(train), bool)
    return {"poisoned": train.poisoned_mask(), "cross": cross, "sample_positions": train.sample_positions(),
            "target": np.int64(data.target), "trigger_mask": np.zeros((0, 0), bool) if mask is None else mask,
            "trigger_mask_reason": np.array(reason), "test_rows": np.asarray(data.test.rows),
            "test_survived": np.asarray(data.test.survived, bool)}


def trigger_footprint(data: RunData, config: RunConfig) -> tuple[np.ndarray | None, str]:
    """Where the trigger writes at the model input, if that is one fixed, localised mask; else None and why.

    Decided from the trigger itself (:func:`_fixed_footprint`) at the size it is stamped at. At the ``input`` stage
    the mask is the trigger's own; at the ``source`` stage it meets crop and resize, so it is where the first test
    images changed (their union; the same pixels for each, as the mask is fixed).
    """
    trigger = data.trigger
    if not trigger.changes_pixels:
        return None, "the trigger changes no pixel (a label-only attack)"
    if not len(data.test):
        return None, "no test image"
    if config.trigger.stage == "input":
        return _fixed_footprint(trigger, config.image_size, config.image_size)
    height, width = np.asarray(data.dataset.read_source(int(data.test.rows[0]))).shape[-2:]
    mask, reason = _fixed_footprint(trigger, height, width)
    if mask is None:
        return None, reason
    k = min(len(data.test), 64)
    diff = np.asarray(data.test.clean[0:k]) != np.asarray(data.test.triggered[0:k])
    changed = diff.any(axis=tuple(range(diff.ndim - 2)))  # over the images (and a colour image's channels)
    if not changed.any():
        return None, "the trigger changed no pixel of the first test images (it did not survive preprocessing)"
    return changed, ""


MAX_MASK_SHARE = 0.25  # a mask larger than this share of the image overlaps any reversed mask of its size by chance
MASK_DRAWS = 8  # random draws that must all give the same mask for it to count as fixed


def _fixed_footprint(trigger, height: int, width: int) -> tuple[np.ndarray | None, str]:
    """The trigger's mask support on a ``height``×``width`` image if it is fixed and localised; else None and why.

    Fixed: :meth:`~medbackdoor.triggers.Trigger.pattern` gives the same support for ``MASK_DRAWS`` different random
    draws (a patch at a random place does not). Localised: the support covers at most ``MAX_MASK_SHARE`` of the
    image (a blend's covers all of it). A trigger that is not a mask and a pattern (warp, SIG, frequency) has none.
    """
    try:
        masks = [trigger.pattern(height, width, np.random.default_rng([k, 17]))[0] > 0 for k in range(MASK_DRAWS)]
    except NotImplementedError:
        return None, f"{type(trigger).__name__} is not a mask and a pattern: it has no mask to compare"
    if any(not np.array_equal(masks[0], m) for m in masks[1:]):
        return None, "the trigger's mask changes from image to image (e.g. a random location): no one true mask"
    share = float(masks[0].mean())
    if share == 0:
        return None, "the trigger's mask is empty"
    if share > MAX_MASK_SHARE:
        return None, (f"the trigger's mask covers {share:.0%} of the image (more than {MAX_MASK_SHARE:.0%}): "
                      "any mask of its size overlaps it")
    return masks[0], ""
