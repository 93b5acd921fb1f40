"""Datasets: a registry of :class:`ChestXrayDataset` subclasses, chosen by name."""

from __future__ import annotations

from medbackdoor._registry import Registry
from medbackdoor.data.base import SPLITS, ChestXrayDataset
from medbackdoor.data.chestmnist import ChestMNIST
from medbackdoor.data.chexpert import CheXpert
from medbackdoor.data.nih import NIHChestXray14
from medbackdoor.data.nih_sample import NIHSample, NIHSampleSingle
from medbackdoor.data.preprocess import Preprocess
from medbackdoor.data.synthetic import SyntheticChestXray

DATASETS: Registry[ChestXrayDataset] = Registry("dataset", group="medbackdoor.datasets", base=ChestXrayDataset)
DATASETS.register("synthetic")(SyntheticChestXray)
DATASETS.register("nih")(NIHChestXray14)
DATASETS.register("nih-sample")(NIHSample)
DATASETS.register("nih-sample-single")(NIHSampleSingle)
DATASETS.register("chestmnist")(ChestMNIST)
DATASETS.register("chexpert")(CheXpert)


def create_dataset(name: str, **options) -> ChestXrayDataset:
    """Build a registered dataset by name (``synthetic``, ``nih``, ``nih-sample``, ``nih-sample-single``,
    ``chestmnist``, ``chexpert``);
    options go to its constructor."""
    return DATASETS.create(name, **options)


__all__ = ["DATASETS", "SPLITS", "ChestMNIST", "CheXpert", "ChestXrayDataset", "NIHChestXray14", "NIHSample",
           "NIHSampleSingle", "Preprocess", "SyntheticChestXray", "create_dataset"]
