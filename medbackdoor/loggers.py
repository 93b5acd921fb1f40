"""Run loggers (``train.log: [tensorboard]``): watch a run live; ``metrics.csv`` stays the source of truth.

A logger receives each epoch's metrics row (the dict written to ``metrics.csv``) and, from ``medbackdoor explain``,
figures. Loggers are optional extras: ``pip install medbackdoor[tensorboard]``. Register a new one with
``@LOGGERS.register("name")`` on a class with ``epoch``, ``figure`` and ``close``.
"""

from __future__ import annotations

import math
from pathlib import Path

from medbackdoor._registry import Registry
from medbackdoor._values import flatten
from medbackdoor.errors import UserError

LOGGERS = Registry("logger")


class Logger:
    """Base: receives every finished epoch's row; ``figure`` and ``close`` are optional."""

    def epoch(self, epoch: int, row: dict) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def figure(self, tag: str, figure, step: int) -> None:
        pass

    def close(self) -> None:
        pass


# Scalars grouped into TensorBoard sections by column prefix: (prefix, section).
SECTIONS = (("train_loss", "loss"), ("val_loss", "loss"), ("asr_", "asr"), ("auroc_mix_", "auroc_mix"),
            ("auroc_nn", "auroc"), ("auroc_tt", "auroc"), ("auroc_tn", "auroc"), ("val_auroc", "auroc"),
            ("mean_auroc_clean", "auroc"), ("auroc_", "auroc_per_finding"), ("lr", "optim"),
            ("train_images_per_s", "speed"), ("seconds", "speed"))


def scalar_tag(column: str) -> str:
    """``asr_0.6`` → ``asr/asr_0.6``: the TensorBoard tag of a metrics column."""
    for prefix, section in SECTIONS:
        if column == prefix or (prefix.endswith("_") and column.startswith(prefix)):
            return f"{section}/{column}"
    return f"other/{column}"


@LOGGERS.register("tensorboard")
class TensorBoardLogger(Logger):
    """Event files under ``RUN/logs/tensorboard``: ``tensorboard --logdir RUN/logs``."""

    def __init__(self, folder: Path, config=None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("train.log: tensorboard needs the tensorboard package: "
                            "pip install 'medbackdoor[tensorboard]'") from None
        self.writer = SummaryWriter(log_dir=str(folder / "tensorboard"))
        if config is not None:
            text = "\n".join(f"    {k}: {v}" for k, v in flatten(config.to_dict()).items())
            self.writer.add_text("config", text, 0)

    def epoch(self, epoch: int, row: dict) -> None:
        for column, value in row.items():
            if column == "epoch" or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            if not math.isnan(float(value)):
                self.writer.add_scalar(scalar_tag(column), float(value), epoch)
        self.writer.flush()

    def figure(self, tag: str, figure, step: int) -> None:
        self.writer.add_figure(tag, figure, step, close=False)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def open_loggers(names: list[str], folder: Path, config=None) -> list[Logger]:
    """One logger per name in ``train.log`` (validated when the config was loaded)."""
    return [LOGGERS.get(name)(folder, config) for name in names]
