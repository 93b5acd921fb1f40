"""A defense's summary: the typed record of ``RUN/defenses/NAME/summary.json``, with its one writer and one reader.

``medbackdoor defend`` writes it (:func:`medbackdoor.defenses.runner.defend`, then ``retrain``); the printout, a
sweep and the report read it. The JSON keeps the record's field names, flat, leaving out the fields of other
kinds (``None``); a summary written before a field existed reads with that field's default.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medbackdoor._io import atomic_path, plain
from medbackdoor.errors import UserError


@dataclass
class DefenseSummary:
    """One defense on one run, scored against the truth.

    Every kind has the first block; the others are set by kind (``None`` otherwise).

    Attributes:
        name: the folder under ``RUN/defenses/``.
        request: what the summary answers (method, options, holdout, epoch and checkpoint digest): a later call
            with the same request reuses it.
        metric_columns: the run's metric columns, name → printed label (ASR at its thresholds, AUROCs).
        detection: data and input defenses: :func:`~medbackdoor.defenses.scoring.detection_summary`.
        flagged_positions: data defenses: the training positions flagged (what a retrain drops).
        threshold: input defenses: the calibrated flag threshold.
        calibration, calibration_images: input defenses: the calibration rule (``crossfit`` or ``split``) and
            how many clean holdout scores set the threshold.
        backdoored_verdict ... reversed_trigger: model defenses: the scan's verdict, flags and the target's rank.
        before, after: mitigations: the metric columns before and after.
        retrain: data defenses after cleanse-and-retrain: the retrained run, how many were dropped, its metric
            columns beside the run's.
        cross_samples: data defenses (and a mitigation that isolates): how many of the attack's cross and cover
            samples (clean labels, not poisoned) were flagged; they are left out of ``detection``.
        origin: where the defense came from (``{"builtin": name}``, or a plugin's spec, file and digest).
        timings: seconds spent writing the defender's materials, starting the defense process, and in the defense
            itself (``defense_seconds``; ``seconds`` is the whole call).
        defender_seed: the root of the defender's seeds (``--defender-seed``).
        defaults_digest: the digest of the frozen defaults record (:func:`medbackdoor.defaults.defaults_digest`)
            the summary was made under.
        clean_model: for a summary under ``NAME/clean-model/``: the clean control whose model ran the defense.
    """

    name: str
    method: str
    kind: str
    run: str
    epoch: int
    holdout: int
    request: dict
    paper: Any = ""
    changes: Any = ""
    options: dict = field(default_factory=dict)
    metric_columns: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    ms_per_image: float = 0.0
    images_scored: int = 0
    info: dict | None = None
    detection: dict | None = None
    flagged_positions: list[int] | None = None
    threshold: Any = None
    calibration: str | None = None
    calibration_images: int | None = None
    backdoored_verdict: bool | None = None
    flagged_labels: list[str] | None = None
    target: str | None = None
    target_rank: int | None = None
    target_flagged: bool | None = None
    poisoned_run: bool | None = None
    reversed_trigger: dict | None = None
    before: dict[str, float] | None = None
    after: dict[str, float] | None = None
    retrain: dict | None = None
    cross_samples: dict | None = None
    origin: dict | None = None
    timings: dict | None = None
    defender_seed: int | None = None
    defaults_digest: str | None = None
    clean_model: dict | None = None


def write_summary(path: Path, summary: DefenseSummary) -> None:
    """Write ``summary`` to ``path`` atomically (fields that are ``None`` are left out)."""
    data = {k: v for k, v in dataclasses.asdict(summary).items() if v is not None}
    with atomic_path(path, suffix=".json") as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=plain))


def read_summary(path: Path) -> DefenseSummary:
    """The summary at ``path`` (keys no field has, from other versions, are ignored)."""
    try:
        data = json.loads(Path(path).read_text())
    except ValueError as exc:
        raise UserError(f"{path} is not a defense summary (not valid JSON: {exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a defense summary (not a JSON object)")
    names = {f.name for f in dataclasses.fields(DefenseSummary)}
    data.setdefault("name", Path(path).parent.name)
    return DefenseSummary(**{k: v for k, v in data.items() if k in names})
