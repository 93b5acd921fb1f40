"""A finished run, opened once: the one way every task reads a run folder.

:class:`Run` holds a run's config, manifest, attack record, checkpoints and epochs, and builds its data once, when
a task first needs pixels (:attr:`Run.data`: the training set as trained, checked against the attack record the
run wrote; :attr:`Run.test`: the test split alone, clean and triggered). ``defend``, the cleanse-and-retrain,
``explain``, the clean-control scoring and ``poison preview`` all take a :class:`Run`; its paths are its
:class:`~medbackdoor.rundir.RunDir`'s.

:func:`medbackdoor.experiment.build_run_data` is the one place that poisons a training set; a finished run reaches
it only through :attr:`Run.data`.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np

from medbackdoor.config import RunConfig
from medbackdoor.errors import UserError
from medbackdoor.experiment import RunData, TestData, attack_record, build_run_data, build_test_data
from medbackdoor.manifest import Manifest
from medbackdoor.rundir import RunDir


class Run:
    """A run folder written by ``medbackdoor run`` (or a config not run yet, :meth:`planned`).

    Args:
        path: the run folder.

    Raises:
        UserError: the folder holds no run (no ``config.yaml``).
    """

    def __init__(self, path: str | Path | RunDir) -> None:
        self.dir = path if isinstance(path, RunDir) else RunDir(path)
        if not self.dir.exists():
            raise UserError(f"{self.dir.path} is not a run folder (no config.yaml)")
        self.config: RunConfig = self.dir.config()

    @classmethod
    def planned(cls, config: RunConfig) -> Run:
        """A run of ``config`` that has no folder (yet): its data can be built and looked at (``poison preview``),
        it has no checkpoint."""
        run = cls.__new__(cls)
        run.dir, run.config = None, config
        return run

    def __repr__(self) -> str:
        return f"Run({str(self.path) if self.dir else 'planned'!r})"

    @property
    def path(self) -> Path:
        if self.dir is None:
            raise UserError("this run has no folder")
        return self.dir.path

    @property
    def name(self) -> str:
        return self.path.name

    # --- what the folder records ------------------------------------------------------------------------------------

    @cached_property
    def manifest(self) -> Manifest:
        return self.dir.manifest() if self.dir else Manifest()

    @property
    def label_names(self) -> tuple[str, ...]:
        if self.dir is not None:
            return self.dir.label_names()
        return tuple(self.data.dataset.label_names)

    def epochs(self) -> list[int]:
        """Epochs with a checkpoint on disk, ascending."""
        return self.dir.checkpoint_epochs() if self.dir else []

    def resolve_epoch(self, epoch: int | None = None) -> int:
        """``epoch`` if its checkpoint is there, the last one for None (one line when there is none)."""
        if self.dir is None:
            raise UserError("a planned run has no checkpoint")
        return self.dir.resolve_epoch(epoch)

    def last_complete_epoch(self) -> int:
        return self.dir.last_complete_epoch() if self.dir else 0

    def fingerprint(self, epoch: int) -> str:
        """The checkpoint file's digest (what names the model a task used)."""
        return self.dir.checkpoint_fingerprint(epoch)

    def model(self, epoch: int | None = None, device="cpu"):
        """The model as trained up to ``epoch`` (default the last), in eval mode on ``device``."""
        return self.dir.load_model(self.resolve_epoch(epoch), device, self.config)

    def device(self, name: str | None = None):
        """``name``, or the run's ``train.device``, as a torch device (``auto``: CUDA when there is one)."""
        from medbackdoor.inference import pick_device

        return pick_device(name or self.config.train.device)

    @cached_property
    def attack(self) -> dict[str, np.ndarray]:
        """The attack record (``RUN/attack.npz``: poisoned and cross samples as trained, target, trigger mask, test
        survival). A run made before runs recorded it gets the same record computed from its data."""
        record = self.dir.attack() if self.dir else None
        return record if record is not None else attack_record(self.data, self.config)

    # --- pixels, built once -----------------------------------------------------------------------------------------

    @cached_property
    def data(self) -> RunData:
        """The run's data: the dataset, the training set as trained (poisoned as the attack record says), the
        validation split and the triggered test split. Built once; checked against the attack record.

        Raises:
            UserError: the data no longer match what the run recorded (the dataset or the code changed).
        """
        data = build_run_data(self.config, progress=False)
        record = self.dir.attack() if self.dir else None
        if record is not None:
            poisoned = np.asarray(record["poisoned"], bool)
            if len(poisoned) != len(data.train) or not np.array_equal(poisoned, data.train.poisoned_mask()):
                raise UserError(f"{self.dir.attack_path} records {int(poisoned.sum())} poisoned of {len(poisoned)} "
                                f"training samples, the rebuilt data {len(data.train.poisoned)} of "
                                f"{len(data.train)}: the data or the code changed since the run was made")
        return data

    @cached_property
    def test(self) -> TestData:
        """The test split, clean and triggered (the training set is not built unless :attr:`data` already was)."""
        if "data" in self.__dict__:
            return self.data.test
        return build_test_data(self.config)

    @property
    def target(self) -> int:
        """The attacked label's index."""
        return int(self.attack["target"]) if self.dir and self.dir.attack_path.is_file() else self.data.target
