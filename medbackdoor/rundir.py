"""The run folder: what ``medbackdoor run`` writes and every later command (summary, report, explain) reads.

Layout::

    RUN/config.yaml                  the resolved config
    RUN/metrics.csv                  one row per epoch
    RUN/manifest.json                status, counts, versions, timings, survival
    RUN/predictions/epoch_NNN.npz    scores in the ``medbackdoor metrics`` format
    RUN/checkpoints/epoch_NNN.pt     model, optimizer, scheduler and RNG state
    RUN/explain/                     written by ``medbackdoor explain``
    RUN/attack.npz                   what the attack did (poisoned samples, trigger mask, survival), for scoring
    RUN/heartbeat                    touched every few seconds of training or scoring (its mtime is progress)
    RUN/logs/                        the ``train.log`` loggers' files
    RUN/defenses/NAME/               written by ``medbackdoor defend``: summary.json, scores.csv, figures,
                                     failed.txt (a sweep's traceback), retrain_drop.txt and retrain/ (a run folder)
    RUN/control.json                 the clean control's response to this run's trigger (a sweep's step)
    RUN/control_failed.txt           its traceback when that scoring failed
    RUN/abl_isolated.txt             ``train.abl``: the isolated training positions (and abl_losses.npy)

A sweep's ``--out`` folder (:class:`SweepDir`)::

    OUT/sweep.yaml                   the sweep as run (its spec and the run names)
    OUT/sweep_status.json            one status per run and per step
    OUT/runs/NAME/                   one run folder per grid point
    OUT/figure1/{trigger,clean}/     the pair a sweep trains for Figure 1 alone
    OUT/report/                      written by ``medbackdoor report``

This module is the only place that knows these names. Every file is written atomically.
"""

from __future__ import annotations

import csv
import hashlib
import shutil
from pathlib import Path

import numpy as np

from medbackdoor._io import atomic_path, read_json, write_json, write_rows, write_text
from medbackdoor.config import RunConfig, dump_config, load_config
from medbackdoor.errors import UserError
from medbackdoor.manifest import Manifest


class RunDir:
    """One run folder.

    Args:
        path: the folder (it need not exist yet).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.json"

    @property
    def heartbeat_path(self) -> Path:
        """Touched by the training loop every few seconds of progress; a sweep stops a run whose file goes quiet."""
        return self.path / "heartbeat"

    @property
    def attack_path(self) -> Path:
        """The attack record (:func:`medbackdoor.experiment.attack_record`), written when the run is made."""
        return self.path / "attack.npz"

    def attack(self) -> dict[str, np.ndarray] | None:
        """The attack record's arrays (loaded without pickle), None for a run made before runs recorded it."""
        if not self.attack_path.is_file():
            return None
        with np.load(self.attack_path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    def write_attack(self, record: dict[str, np.ndarray]) -> None:
        with atomic_path(self.attack_path, suffix=".npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, **record)

    @property
    def explain_dir(self) -> Path:
        return self.path / "explain"

    @property
    def explain_figure_path(self) -> Path:
        """``medbackdoor explain``'s Figure 1 (PNG; a PDF beside it)."""
        return self.explain_dir / "figure1.png"

    @property
    def localisation_path(self) -> Path:
        """``medbackdoor explain``'s table (tidy CSV: epoch, layer, method, version, quantity, value)."""
        return self.explain_dir / "localisation.csv"

    @property
    def logs_dir(self) -> Path:
        return self.path / "logs"

    @property
    def control_path(self) -> Path:
        """The clean control's scoring of this run's triggered test set (:mod:`medbackdoor.study.controls`)."""
        return self.path / "control.json"

    @property
    def control_failure_path(self) -> Path:
        """The traceback of a failed control scoring."""
        return self.path / "control_failed.txt"

    @property
    def defenses_dir(self) -> Path:
        return self.path / "defenses"

    def defense_dir(self, name: str) -> Path:
        """``RUN/defenses/NAME/``, one defense's outputs.

        Raises:
            UserError: ``name`` is not a plain folder name.
        """
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise UserError(f"bad defense name {name!r}: a folder name under RUN/defenses/")
        return self.defenses_dir / name

    def defense_summary_path(self, name: str) -> Path:
        return self.defense_dir(name) / "summary.json"

    def defense_scores_path(self, name: str) -> Path:
        return self.defense_dir(name) / "scores.csv"

    def defense_failure_path(self, name: str) -> Path:
        """The traceback a sweep writes when defense ``name`` failed on this run."""
        return self.defense_dir(name) / "failed.txt"

    def defense_figure_path(self, name: str, figure: str) -> Path:
        """A figure of defense ``name`` (``roc``, ``reversed_triggers``), as a PNG."""
        return self.defense_dir(name) / f"{figure}.png"

    def clean_model_dir(self, name: str) -> Path:
        """``RUN/defenses/NAME/clean-model/``: defense ``name`` run on the clean control's model with this run's test
        inputs (the trigger-visibility baseline of an input defense; a repair of the clean control scored on this
        run's trigger), its ``summary.json`` and ``scores.csv``."""
        return self.defense_dir(name) / "clean-model"

    def retrain_drop_path(self, name: str) -> Path:
        """The training positions defense ``name`` flagged, one per line (``train.drop`` of its retrain)."""
        return self.defense_dir(name) / "retrain_drop.txt"

    def retrain_dir(self, name: str) -> RunDir:
        """The run folder of the cleanse-and-retrain after defense ``name``."""
        return RunDir(self.defense_dir(name) / "retrain")

    def retrain_control_path(self, name: str) -> Path:
        """The clean control retrained after dropping as many random samples as defense ``name``'s cleanse did,
        scored on this run's trigger (a sweep's step; :func:`medbackdoor.study.controls.retrain_control`)."""
        return self.defense_dir(name) / "retrain_control.json"

    def random_drop_dir(self, count: int) -> RunDir:
        """A clean control's retrain after dropping ``count`` random training samples (it controls a cleanse that
        dropped as many)."""
        return RunDir(self.defenses_dir / f"random-drop-{int(count)}" / "retrain")

    def random_drop_list_path(self, count: int) -> Path:
        """The positions that retrain dropped, one per line (its ``train.drop``)."""
        return self.defenses_dir / f"random-drop-{int(count)}" / "drop.txt"

    @property
    def abl_isolated_path(self) -> Path:
        """``train.abl``: the training positions isolated after the LGA epochs, one per line."""
        return self.path / "abl_isolated.txt"

    @property
    def abl_losses_path(self) -> Path:
        """``train.abl``: every training sample's summed BCE when the isolation was made (``.npy``)."""
        return self.path / "abl_losses.npy"

    def defense_summary_paths(self) -> list[Path]:
        """Every ``defenses/*/summary.json``, sorted by defense name."""
        return sorted(self.defenses_dir.glob("*/summary.json"))

    def step_failure_path(self, step: str) -> Path:
        """Where a sweep's step on this run (``control``, a defense's name, or ``NAME:clean-model``) records its
        traceback."""
        if step == "control":
            return self.control_failure_path
        name, _, sub = step.partition(":")
        return self.clean_model_dir(name) / "failed.txt" if sub == "clean-model" else self.defense_failure_path(name)

    def exists(self) -> bool:
        """True when the folder holds a run (its ``config.yaml``)."""
        return self.config_path.is_file()

    # --- reading -------------------------------------------------------------------------------------------------

    def config(self) -> RunConfig:
        if not self.exists():
            raise UserError(f"{self.path} is not a run folder (no config.yaml)")
        return load_config(self.config_path)

    def manifest(self) -> Manifest:
        """The manifest record (``status == "new"`` when there is none yet)."""
        return Manifest.from_dict(read_json(self.manifest_path))

    def status(self) -> str:
        """``new``, ``running``, ``complete``, ``failed`` or ``interrupted``."""
        return self.manifest().status

    def metrics(self) -> list[dict]:
        """The rows of ``metrics.csv`` as dicts of strings (``[]`` before the first epoch)."""
        if not self.metrics_path.is_file():
            return []
        with open(self.metrics_path, newline="") as f:
            return list(csv.DictReader(f))

    def single_label(self) -> bool:
        """Whether the run's task is single-label (multi-class or binary): its ``metrics.csv`` has the single-label
        columns (``balanced_accuracy``, ..., :data:`~medbackdoor.metrics.columns.SINGLE_LABEL`), which a
        multi-label run's never has. False before the first epoch."""
        if not self.metrics_path.is_file():
            return False
        with open(self.metrics_path, newline="") as f:
            return "balanced_accuracy" in next(csv.reader(f), [])

    def extremes(self) -> dict[str, dict[str, float]]:
        """``{metric: {"min": x, "max": y}}`` over the epochs (non-finite values ignored)."""
        if not self.metrics_path.is_file():
            raise UserError(f"{self.path} is not a run folder (no metrics.csv)")
        rows = self.metrics()
        if not rows:
            raise UserError(f"{self.metrics_path} has no epochs yet")
        out = {}
        for key in rows[0]:
            values = [float(r[key]) for r in rows if r.get(key) not in (None, "", "nan")]
            values = [v for v in values if np.isfinite(v)]
            if values:
                out[key] = {"min": min(values), "max": max(values)}
        return out

    def checkpoint_path(self, epoch: int) -> Path:
        return self.path / "checkpoints" / f"epoch_{epoch:03d}.pt"

    def predictions_path(self, epoch: int) -> Path:
        return self.path / "predictions" / f"epoch_{epoch:03d}.npz"

    def checkpoint_epochs(self) -> list[int]:
        """Epochs whose checkpoint is on disk, ascending."""
        return sorted(int(p.stem.split("_")[1]) for p in (self.path / "checkpoints").glob("epoch_*.pt"))

    def resolve_epoch(self, epoch: int | None) -> int:
        """``epoch`` if its checkpoint is on disk; None means the last checkpoint.

        Raises:
            UserError: no checkpoint at all, or none for ``epoch``.
        """
        have = self.checkpoint_epochs()
        if not have:
            raise UserError(f"{self.path} has no checkpoint")
        if epoch is None:
            return have[-1]
        if epoch not in have:
            raise UserError(f"{self.path} has no checkpoint for epoch {epoch}; available: {have}")
        return epoch

    def checkpoint_fingerprint(self, epoch: int) -> str:
        """The SHA-256 (first 16 hex digits) of epoch ``epoch``'s checkpoint file: what names the model a defense
        or a control scoring used. The digest of one file state (inode, size, modification and change times: a
        rewrite in place moves the change time, which no one can set back) is computed once per process."""
        path = self.checkpoint_path(epoch)
        st = path.stat()
        key = (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if key not in _DIGESTS:
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            _DIGESTS[key] = digest.hexdigest()[:16]
        return _DIGESTS[key]

    def last_complete_epoch(self) -> int:
        """The last epoch with both a metrics row and a checkpoint (0 if none): where a resume starts from."""
        have = set(self.checkpoint_epochs())
        return max((int(r["epoch"]) for r in self.metrics() if int(r["epoch"]) in have), default=0)

    def load_state(self, epoch: int) -> dict:
        """A checkpoint's state dict, loaded with ``weights_only=True`` (nothing is unpickled)."""
        import torch

        path = self.checkpoint_path(epoch)
        if not path.is_file():
            raise UserError(f"{self.path} has no checkpoint for epoch {epoch}; available: {self.checkpoint_epochs()}")
        return torch.load(path, map_location="cpu", weights_only=True)

    def load_model(self, epoch: int, device="cpu", config: RunConfig | None = None):
        """The model as trained up to ``epoch``, in eval mode on ``device``."""
        from medbackdoor.inference import set_layout
        from medbackdoor.models import create_model

        config = config or self.config()
        model = create_model(config.model.arch, "none", len(self.label_names()), image_size=config.image_size,
                             options=config.model.options)
        model.load_state_dict(self.load_state(epoch)["model"])
        return set_layout(model.to(device), config.train.channels_last).eval()

    def label_names(self) -> tuple[str, ...]:
        """The run's label columns, as recorded in the manifest (for a run written before manifests recorded
        them: the labels its dataset declares)."""
        labels = self.manifest().labels
        if labels:
            return tuple(labels)
        from medbackdoor.data import DATASETS

        return tuple(DATASETS.get(self.config().dataset.name).label_names)

    def load_predictions(self, epoch: int) -> dict:
        from medbackdoor.metrics import load_predictions

        return load_predictions(self.predictions_path(epoch))

    # --- writing -------------------------------------------------------------------------------------------------

    def write_config(self, config: RunConfig) -> None:
        write_text(self.config_path, dump_config(config))

    def write_metrics(self, rows: list[dict]) -> None:
        write_rows(self.metrics_path, rows)

    def write_manifest(self, manifest: Manifest) -> None:
        write_json(self.manifest_path, manifest.to_dict())

    def clear(self) -> None:
        """Remove everything a run wrote (``--force``), and everything computed from it: explanations, defenses
        (with their retrains and failure records), the control scoring and its failure record, ``train.abl``'s
        isolation, logs."""
        for path in (self.metrics_path, self.manifest_path, self.config_path, self.heartbeat_path, self.attack_path,
                     self.control_path, self.control_failure_path, self.abl_isolated_path, self.abl_losses_path):
            path.unlink(missing_ok=True)
        for folder in (self.path / "predictions", self.path / "checkpoints", self.explain_dir, self.defenses_dir,
                       self.logs_dir):
            shutil.rmtree(folder, ignore_errors=True)


_DIGESTS: dict[tuple, str] = {}  # checkpoint file state -> digest, see RunDir.checkpoint_fingerprint


class SweepDir:
    """A sweep's ``--out`` folder: its run folders, the Figure-1 pair, its status and its report.

    Args:
        path: the folder (it need not exist yet).
    """

    FIGURE_DIR = "figure1"  # OUT/figure1/{trigger,clean}

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"SweepDir({str(self.path)!r})"

    @property
    def spec_path(self) -> Path:
        return self.path / "sweep.yaml"

    @property
    def status_path(self) -> Path:
        return self.path / "sweep_status.json"

    @property
    def runs_dir(self) -> Path:
        return self.path / "runs"

    @property
    def report_dir(self) -> Path:
        return self.path / "report"

    def run_folder(self, name: str) -> str:
        """A grid point's folder, relative to the sweep folder (``runs/NAME``)."""
        return f"runs/{name}"

    @classmethod
    def figure_name(cls, which: str) -> str:
        """The name (and relative folder) of the Figure-1 pair's ``trigger`` or ``clean`` run."""
        return f"{cls.FIGURE_DIR}/{which}"

    @classmethod
    def is_figure_run(cls, name: str) -> bool:
        return name.startswith(f"{cls.FIGURE_DIR}/")

    def figure_run(self, which: str) -> RunDir:
        return RunDir(self.path / self.figure_name(which))

    def run_dirs(self) -> list[RunDir]:
        """The grid's run folders (``runs/*`` with a config), sorted by name."""
        return [RunDir(p) for p in sorted(self.runs_dir.glob("*")) if (p / "config.yaml").is_file()]
