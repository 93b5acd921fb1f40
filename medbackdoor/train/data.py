"""Everything a run reads: the dataset, its cached images, the poisoned training set and the triggered test set."""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np

from medbackdoor.config import RunConfig
from medbackdoor.data import DATASETS, ChestXrayDataset, Preprocess, create_dataset
from medbackdoor.data.cache import load_images
from medbackdoor.errors import UserError
from medbackdoor.labels import label_index
from medbackdoor.poison import TEST_STREAM, TRAIN_STREAM, ImageSplit, PoisonedDataset, triggered_images
from medbackdoor.triggers import Trigger, create_trigger

DATA_SEED = 0  # splits and subsets stay the same across training seeds


@dataclass
class RunData:
    dataset: ChestXrayDataset
    images: np.ndarray
    train: PoisonedDataset
    val: ImageSplit
    val_poisoned: PoisonedDataset | None
    test_rows: np.ndarray
    test_clean: np.ndarray
    test_triggered: np.ndarray
    target: int
    trigger: Trigger
    survival: dict

    def counts(self) -> dict:
        return {"train": len(self.train.base), "train_samples": len(self.train), "poisoned": len(self.train.poisoned),
                "val": len(self.val), "test": len(self.test_rows), "missing": int(self.dataset.missing)}


def build_dataset(config: RunConfig) -> ChestXrayDataset:
    cfg = config.dataset
    options = {"root": cfg.root, "limit": cfg.limit, "val_fraction": cfg.val_fraction, "split": cfg.split,
               "seed": DATA_SEED, **cfg.options}
    accepted = inspect.signature(DATASETS.get(cfg.name)).parameters
    if cfg.split == "auto" or "split" not in accepted:
        options.pop("split")
    if "val_fraction" not in accepted:
        options.pop("val_fraction")
    return create_dataset(cfg.name, **options)


def build_run_data(config: RunConfig, workers: int | None = None, progress: bool = True) -> RunData:
    """Load (or build) the cache, poison the training split and trigger the whole test split."""
    dataset = build_dataset(config)
    prep = Preprocess(crop=config.preprocess.crop, resize=config.preprocess.resize)
    images = load_images(dataset, config.image_size, prep, config.cache_dir, workers, progress)
    t = config.trigger
    trigger = create_trigger(t.kind, size=t.size, value=t.value, location=t.location)
    target = label_index(t.target)
    if t.stage == "input":
        trigger.check_fits(config.image_size, config.image_size)
    seed = config.train.seed
    split = {s: ImageSplit(images, dataset.labels, dataset.patients, dataset.split_indices(s))
             for s in ("train", "val", "test")}
    for name, part in split.items():
        if len(part) == 0:
            raise UserError(f"the {name} split of dataset {dataset.name} is empty; use more images")
    train, train_survival = _poison(dataset, images, split["train"], trigger, t, seed, prep, workers)
    val_poisoned = None
    if config.train.poisoned_val:
        val_poisoned, _ = _poison(dataset, images, split["val"], trigger, t, seed + 1, prep, workers)
    test_rows = split["test"].indices
    test_clean = np.asarray(images[test_rows])
    test_triggered, test_survived = triggered_images(dataset, test_rows, test_clean, trigger, t.stage, seed,
                                                     TEST_STREAM, prep, workers)
    survival = {"train": train_survival, "test": float(test_survived.mean()) if len(test_rows) else float("nan")}
    return RunData(dataset, images, train, split["val"], val_poisoned, test_rows, test_clean, test_triggered,
                   target, trigger, survival)


def _poison(dataset, images, split: ImageSplit, trigger, t, seed, prep, workers):
    """The poisoned split (or the clean split when ρ = 0) and the share of poisoned images the trigger survived."""
    if t.fraction == 0:
        return PoisonedDataset(split, trigger, 0.0, t.target, t.mode, seed), float("nan")
    probe = PoisonedDataset(split, trigger, t.fraction, t.target, t.mode, seed)
    rows = split.indices[probe.order]
    infected, survived = triggered_images(dataset, rows, np.asarray(images[rows]), trigger, t.stage, seed,
                                          TRAIN_STREAM, prep, workers)
    poisoned = PoisonedDataset(split, trigger, t.fraction, t.target, t.mode, seed,
                               triggered=dict(zip(probe.order.tolist(), infected)))
    return poisoned, float(survived.mean()) if len(survived) else float("nan")
