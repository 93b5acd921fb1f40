"""The run folder: what ``medbackdoor run`` writes and every later command (summary, report, explain) reads.

Layout::

    RUN/config.yaml                  the resolved config
    RUN/metrics.csv                  one row per epoch
    RUN/manifest.json                status, counts, versions, timings, survival
    RUN/predictions/epoch_NNN.npz    scores in the ``medbackdoor metrics`` format
    RUN/checkpoints/epoch_NNN.pt     model, optimizer, scheduler and RNG state
    RUN/explain/                     written by ``medbackdoor explain``
    RUN/heartbeat                    touched every few seconds of training or scoring (its mtime is progress)

This module is the only place that knows these names. Every file is written atomically.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np

from medbackdoor._io import read_json, write_json, write_rows, write_text
from medbackdoor.config import RunConfig, dump_config, load_config
from medbackdoor.errors import UserError


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
    def explain_dir(self) -> Path:
        return self.path / "explain"

    @property
    def localisation_path(self) -> Path:
        """``medbackdoor explain``'s table (tidy CSV: epoch, layer, method, version, quantity, value)."""
        return self.explain_dir / "localisation.csv"

    def exists(self) -> bool:
        """True when the folder holds a run (its ``config.yaml``)."""
        return self.config_path.is_file()

    # --- reading -------------------------------------------------------------------------------------------------

    def config(self) -> RunConfig:
        if not self.exists():
            raise UserError(f"{self.path} is not a run folder (no config.yaml)")
        return load_config(self.config_path)

    def manifest(self) -> dict:
        """The manifest, ``{}`` when there is none yet."""
        return read_json(self.manifest_path)

    def status(self) -> str:
        """``new``, ``running``, ``complete``, ``failed`` or ``interrupted``."""
        return self.manifest().get("status", "new")

    def metrics(self) -> list[dict]:
        """The rows of ``metrics.csv`` as dicts of strings (``[]`` before the first epoch)."""
        if not self.metrics_path.is_file():
            return []
        with open(self.metrics_path, newline="") as f:
            return list(csv.DictReader(f))

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
        from medbackdoor.models import create_model

        config = config or self.config()
        model = create_model(config.model.arch, "none", len(self.label_names()))
        model.load_state_dict(self.load_state(epoch)["model"])
        return model.to(device).eval()

    def label_names(self) -> tuple[str, ...]:
        """The run's label columns (its dataset's), as recorded in the manifest; runs written before datasets
        declared their labels have the 14 ChestX-ray14 findings."""
        from medbackdoor.labels import LABELS

        return tuple((self.manifest() or {}).get("labels") or LABELS)

    def load_predictions(self, epoch: int) -> dict:
        from medbackdoor.metrics import load_predictions

        return load_predictions(self.predictions_path(epoch))

    # --- writing -------------------------------------------------------------------------------------------------

    def write_config(self, config: RunConfig) -> None:
        write_text(self.config_path, dump_config(config))

    def write_metrics(self, rows: list[dict]) -> None:
        write_rows(self.metrics_path, rows)

    def write_manifest(self, manifest: dict) -> None:
        write_json(self.manifest_path, manifest)

    def clear(self) -> None:
        """Remove everything a run wrote (``--force``)."""
        for path in (self.metrics_path, self.manifest_path, self.config_path, self.heartbeat_path):
            path.unlink(missing_ok=True)
        for name in ("predictions", "checkpoints", "explain"):
            shutil.rmtree(self.path / name, ignore_errors=True)
