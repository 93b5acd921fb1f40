"""Poisoning: the generic wrapper and the stage at which the trigger is written."""

from medbackdoor.poison.stage import StampedRows, changed, triggered_images, triggered_view
from medbackdoor.poison.wrapper import (
                                        MODES,
                                        STAGES,
                                        TEST_STREAM,
                                        TRAIN_STREAM,
                                        ImageSplit,
                                        PoisonedDataset,
                                        choose_poisoned,
                                        one_hot,
)

__all__ = ["MODES", "STAGES", "TEST_STREAM", "TRAIN_STREAM", "ImageSplit", "PoisonedDataset", "StampedRows", "changed",
           "choose_poisoned", "one_hot", "triggered_images", "triggered_view"]
