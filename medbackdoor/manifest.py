"""A run's manifest (``RUN/manifest.json``) as one typed record, with one writer and one reader.

The training runner fills it when the run is made and after every epoch; a sweep records a failure in it;
``RunDir.manifest()`` reads it back. Everything else reads fields (``manifest.status``, ``manifest.dataset``),
never JSON keys. Keys a later version adds are kept in ``extra`` and written back unchanged, so an older
reader neither fails on a newer folder nor drops what it does not know.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from medbackdoor.errors import UserError

STATUSES = ("new", "running", "complete", "failed", "interrupted")


@dataclass
class Manifest:
    """What a run is and how far it got.

    status: ``new`` (no manifest yet), ``running``, ``complete``, ``failed`` or ``interrupted``.
    config: the run's config as a dict (also in ``config.yaml``; a failure record made before the folder had one
        keeps it here).
    dataset: name, fingerprint, the split counts (``train``, ``train_samples``, ``val``, ``test``,
        ``poisoned``, ...), the ``task`` type (``multilabel``, ``multiclass``, ``binary``) and the image ``channels``.
    target, labels: the infected finding's name and the run's label columns.
    trigger: the trigger's repr; seeds: ``train`` and ``attack``.
    trigger_survival: the share of poisoned training images (``train``) and triggered test images (``test``)
        whose trigger survives preprocessing.
    poisoning: what the generic wrapper did (mode, label policy, counts, cross samples).
    stealth: PSNR, SSIM and changed pixels between clean and triggered test images.
    versions, git_commit, device, distributed, torch_threads: where and with what it ran.
    timings: ``data_seconds`` and ``epochs`` → {epoch: {seconds, train_seconds}}.
    plugins: the run's components that are not built in (``dataset``, ``trigger``, ``model``), each with where it
        came from: a plugin's spec, file and SHA-256, or an entry point's distribution and version.
    epochs_done: the last epoch written; error, traceback: why it failed.
    """

    status: str = "new"
    config: dict = field(default_factory=dict)
    dataset: dict = field(default_factory=dict)
    target: str | None = None
    labels: list[str] | None = None
    trigger: str | None = None
    seeds: dict = field(default_factory=dict)
    trigger_survival: dict = field(default_factory=dict)
    poisoning: dict = field(default_factory=dict)
    stealth: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    git_commit: str | None = None
    device: str | None = None
    distributed: Any = None
    torch_threads: int | None = None
    timings: dict = field(default_factory=lambda: {"epochs": {}})
    cuda_graph: bool | None = None
    pretrained: dict | None = None
    plugins: dict | None = None
    epochs_done: int = 0
    error: str | None = None
    traceback: str | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise UserError(f"manifest status {self.status!r} is not one of {', '.join(STATUSES)}")

    @classmethod
    def from_dict(cls, data: dict) -> Manifest:
        """The record of a manifest's JSON; ``{}`` (no manifest yet) gives ``status == "new"``."""
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        values = {k: v for k, v in data.items() if k in known}
        return cls(**values, extra={k: v for k, v in data.items() if k not in known})

    def to_dict(self) -> dict:
        """The JSON form: every field but ``extra`` (whose keys are written beside them); optional fields that
        are unset are left out."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        for key in ("pretrained", "error", "traceback", "cuda_graph", "plugins"):
            if out[key] is None:
                del out[key]
        return {**out, **self.extra}

    @property
    def exists(self) -> bool:
        """False for the record of a folder with no manifest yet."""
        return self.status != "new"

    def fail(self, error: str, trace: str | None = None, interrupted: bool = False) -> None:
        self.status = "interrupted" if interrupted else "failed"
        self.error = error
        if trace is not None:
            self.traceback = trace
