"""Poisoning: the generic wrapper and the stage at which the trigger is written."""

from medbackdoor.labels import LABEL_POLICIES, infected_label
from medbackdoor.poison.stage import ImageSource, Stamp, StampedRows, changed, triggered_images, triggered_view
from medbackdoor.poison.wrapper import (
                                        MODES,
                                        STAGES,
                                        TEST_STREAM,
                                        TRAIN_STREAM,
                                        ImageSplit,
                                        PoisonedDataset,
                                        choose_among,
                                        choose_poisoned,
                                        one_hot,
)

__all__ = ["ImageSource", "LABEL_POLICIES", "MODES", "STAGES", "TEST_STREAM", "TRAIN_STREAM", "ImageSplit",
           "PoisonedDataset", "Stamp", "StampedRows", "changed", "choose_among", "choose_poisoned", "infected_label",
           "one_hot", "triggered_images", "triggered_view"]
