"""Datasets: a registry of :class:`ChestXrayDataset` subclasses, chosen by name."""

from __future__ import annotations

from medbackdoor._registry import Registry
from medbackdoor.data.base import SPLITS, ChestXrayDataset
from medbackdoor.data.chestmnist import ChestMNIST
from medbackdoor.data.chexpert import CheXpert
from medbackdoor.data.files import CsvImages, ImageFolder
from medbackdoor.data.medmnist2d import (
    OCTMNIST,
    BloodMNIST,
    BreastMNIST,
    DermaMNIST,
    MedMNIST2D,
    OrganAMNIST,
    OrganCMNIST,
    OrganSMNIST,
    PathMNIST,
    PneumoniaMNIST,
    RetinaMNIST,
    TissueMNIST,
)
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
DATASETS.register("folder")(ImageFolder)
DATASETS.register("csv")(CsvImages)
# the single-label MedMNIST 2D flags, each under its MedMNIST name
DATASETS.register("pathmnist")(PathMNIST)
DATASETS.register("dermamnist")(DermaMNIST)
DATASETS.register("octmnist")(OCTMNIST)
DATASETS.register("pneumoniamnist")(PneumoniaMNIST)
DATASETS.register("retinamnist")(RetinaMNIST)
DATASETS.register("breastmnist")(BreastMNIST)
DATASETS.register("bloodmnist")(BloodMNIST)
DATASETS.register("tissuemnist")(TissueMNIST)
DATASETS.register("organamnist")(OrganAMNIST)
DATASETS.register("organcmnist")(OrganCMNIST)
DATASETS.register("organsmnist")(OrganSMNIST)


def create_dataset(name: str, **options) -> ChestXrayDataset:
    """Build a registered dataset by name (``synthetic``, ``nih``, ``nih-sample``, ``nih-sample-single``,
    ``chestmnist``, ``chexpert``, and the single-label MedMNIST 2D flags ``pathmnist``, ``dermamnist``,
    ``octmnist``, ``pneumoniamnist``, ``retinamnist``, ``breastmnist``, ``bloodmnist``, ``tissuemnist``,
    ``organamnist``, ``organcmnist``, ``organsmnist``, and a user's own images, ``folder`` and ``csv``); options go
    to its constructor."""
    return DATASETS.create(name, **options)


__all__ = ["DATASETS", "OCTMNIST", "SPLITS", "BloodMNIST", "BreastMNIST", "ChestMNIST", "CheXpert", "ChestXrayDataset",
           "CsvImages", "DermaMNIST", "ImageFolder", "MedMNIST2D", "NIHChestXray14", "NIHSample", "NIHSampleSingle",
           "OrganAMNIST", "OrganCMNIST", "OrganSMNIST", "PathMNIST", "PneumoniaMNIST", "Preprocess", "RetinaMNIST",
           "SyntheticChestXray", "TissueMNIST", "create_dataset"]
