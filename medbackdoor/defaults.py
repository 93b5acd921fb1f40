"""Every default of every built-in defense and trigger, and the benchmark's rules, in one frozen record.

:func:`current_defaults` reads them from the code: each registered defense's ``revision`` and resolved options
(what ``DefenseClass()`` uses), each registered trigger's constructor defaults, the attack settings of
:class:`~medbackdoor.config.TriggerConfig`, the benchmark's rules (:mod:`medbackdoor.report.scorecard`) and the
benchmark grids themselves (``configs/sweeps/benchmark*.yaml``, which set each attack's strength).
``configs/defaults.json`` is the frozen record (pre-registration): :func:`defaults_digest` is its SHA-256, written
into every defense summary and every scorecard row, and ``medbackdoor defaults`` says whether the code still
matches it. A default changed in the code changes nothing the record says until it is frozen again
(``medbackdoor defaults --freeze``), which changes the digest: an evaluation run under another digest is another
evaluation (docs/results/ledger.md counts them).
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
from pathlib import Path

FROZEN = Path(__file__).resolve().parent / "configs" / "defaults.json"
SWEEPS = FROZEN.parent / "sweeps"
GRIDS = ("benchmark", "benchmark-tune")


def _plain(value):
    return json.loads(json.dumps(value, default=str, sort_keys=True))


def _signature_defaults(factory) -> dict:
    out = {}
    for name, p in inspect.signature(factory).parameters.items():
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.default is not p.empty:
            out[name] = p.default
    return _plain(out)


def current_defaults() -> dict:
    """The record as the code has it now (plain JSON values, sorted keys)."""
    from medbackdoor.config import AblConfig, EvalConfig, TriggerConfig
    from medbackdoor.defenses import DEFENSES
    from medbackdoor.defenses.base import DEFAULT_HOLDOUT
    from medbackdoor.report import scorecard
    from medbackdoor.triggers import TRIGGERS

    defenses = {}
    for name in DEFENSES.builtin_names():
        d = DEFENSES.create(name)
        defenses[name] = {"kind": d.kind, "revision": int(d.revision), "options": _plain(d.options())}
    triggers = {name: _signature_defaults(TRIGGERS.get(name)) for name in TRIGGERS.builtin_names()}
    attack = _plain({k: v for k, v in dataclasses.asdict(TriggerConfig()).items()
                     if k not in ("kind", "target", "seed", "options")})
    grids = {}
    for grid in GRIDS:
        path = SWEEPS / f"{grid}.yaml"
        grids[grid] = hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else None
    return {"defenses": defenses, "triggers": triggers, "attack": attack,
            "abl_training": _plain(dataclasses.asdict(AblConfig())), "holdout": DEFAULT_HOLDOUT,
            "eval": _plain(dataclasses.asdict(EvalConfig())), "rules": _plain(scorecard.RULES), "grids": grids}


def canonical(record: dict) -> str:
    return json.dumps(record, sort_keys=True, indent=1, ensure_ascii=False) + "\n"


def frozen_defaults(path: Path = FROZEN) -> dict:
    """The frozen record (``configs/defaults.json``); empty when it is missing."""
    return json.loads(path.read_text()) if path.is_file() else {}


def defaults_digest(path: Path = FROZEN) -> str:
    """The SHA-256 (first 12 hex digits) of the frozen record's canonical text; ``"unfrozen"`` without one."""
    record = frozen_defaults(path)
    return hashlib.sha256(canonical(record).encode()).hexdigest()[:12] if record else "unfrozen"


def differences(frozen: dict, current: dict, prefix: str = "") -> list[str]:
    """Every dotted key whose value differs between two records, as ``key: frozen -> current`` lines."""
    out = []
    for key in sorted(set(frozen) | set(current)):
        a, b = frozen.get(key, "<absent>"), current.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {json.dumps(a)} -> {json.dumps(b)}")
    return out


def freeze(path: Path = FROZEN) -> str:
    """Write the current record as the frozen one; returns its digest."""
    path.write_text(canonical(current_defaults()))
    return defaults_digest(path)
