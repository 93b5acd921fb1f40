"""The backdoor metric columns of a run: which numbers its evaluation settings ask for, named and printed one way.

``metrics.csv``, the mitigations' before/after, cleanse-and-retrain, ``medbackdoor defend``'s printout and the
study report all take their columns from :func:`metric_columns`, so a run evaluated at ``eval.thresholds: [0.5]``
with ``eval.strict: true`` is reported as ``asr_0.5`` (scores strictly above 0.5) everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medbackdoor.config import EvalConfig, from_dict
from medbackdoor.errors import UserError
from medbackdoor.metrics.multilabel import backdoor_metrics
from medbackdoor.metrics.singlelabel import single_label_metrics


@dataclass(frozen=True)
class MetricColumn:
    """One backdoor metric column.

    Attributes:
        name: the column name in ``metrics.csv`` and every table (``asr_0.5``, ``auroc_nn``, ``auroc_mix_0.1``).
        label: how it is printed (``ASR(p=0.6)``; ``ASR(p>0.5)`` when ASR counts scores strictly above p).
        group: ``asr``, ``auroc`` (AUROC-TT/NN/TN) or ``mixed`` (micro AUROC with a fraction ε triggered).
        path: where :func:`~medbackdoor.metrics.backdoor_metrics`' nested result holds it.
    """

    name: str
    label: str
    group: str
    path: tuple[str, ...]

    def value(self, metrics: dict) -> float:
        """This column's number in a :func:`~medbackdoor.metrics.backdoor_metrics` result."""
        node = metrics
        for key in self.path:
            node = node[key]
        return float(node)


# a single-label task's columns (:mod:`medbackdoor.metrics.singlelabel`): the clean test set's accuracy, balanced
# accuracy and macro one-vs-rest AUROC, then the backdoor test set's ASR and R-Acc (by argmax)
SINGLE_LABEL = (MetricColumn("accuracy", "Acc", "clean", ("accuracy",)),
                MetricColumn("balanced_accuracy", "BalAcc", "clean", ("balanced_accuracy",)),
                MetricColumn("auroc_macro", "AUROC(macro)", "clean", ("auroc_macro",)),
                MetricColumn("asr", "ASR", "asr", ("asr",)),
                MetricColumn("racc", "R-Acc", "racc", ("racc",)))


def metric_columns(ev: EvalConfig, conditional: bool = False, task=None) -> tuple[MetricColumn, ...]:
    """The backdoor metric columns of the evaluation settings ``ev``, in the paper's table order.

    ASR at each ``ev.thresholds`` p (strictly above p with ``ev.strict``, else at least p), AUROC-TT, AUROC-NN,
    AUROC-TN, then the mixed-test-set AUROC at each ``ev.epsilons`` ε; with ``conditional`` (a source-specific
    trigger) last the off-condition ASR at each p (``asr_off_{p}``, group ``off``). A single-label ``task`` (a
    :class:`~medbackdoor.task.Task`) has the columns :data:`SINGLE_LABEL` whatever ``ev`` says.
    """
    if task is not None and task.single_label:
        return SINGLE_LABEL
    sign = ">" if ev.strict else "="
    asr = [MetricColumn(f"asr_{p:g}", f"ASR(p{sign}{p:g})", "asr", ("asr", f"{p:g}")) for p in ev.thresholds]
    auroc = [MetricColumn(f"auroc_{k}", f"AUROC-{k.upper()}", "auroc", (f"auroc_{k}",)) for k in ("tt", "nn", "tn")]
    mixed = [MetricColumn(f"auroc_mix_{e:g}", f"AUROC(ε={e:g})", "mixed", ("auroc_mix", f"{e:g}"))
             for e in ev.epsilons]
    off = [MetricColumn(f"asr_off_{p:g}", f"ASR-off(p{sign}{p:g})", "off", ("asr_off", f"{p:g}"))
           for p in ev.thresholds] if conditional else []
    return (*asr, *auroc, *mixed, *off)


def table_columns(ev: EvalConfig) -> tuple[MetricColumn, ...]:
    """The columns of the paper's Tables 1 and 2 (ASR at each p, AUROC-TT/NN/TN): :func:`metric_columns` less
    the mixed-test-set AUROCs."""
    return tuple(c for c in metric_columns(ev) if c.group not in ("mixed", "off"))


def column_values(columns: tuple[MetricColumn, ...], metrics: dict) -> dict[str, float]:
    """``{column name: value}`` of a :func:`~medbackdoor.metrics.backdoor_metrics` result."""
    return {c.name: c.value(metrics) for c in columns}


def score_columns(ev: EvalConfig, y_true: np.ndarray, score_clean: np.ndarray, score_triggered: np.ndarray,
                  target: int, seed: int, label: str = "onehot", carriers: np.ndarray | None = None,
                  condition: np.ndarray | None = None, task=None) -> dict:
    """:func:`~medbackdoor.metrics.backdoor_metrics` computed with the settings ``ev`` (thresholds, strictness,
    ε), i.e. exactly as a run scores its test set every epoch. Arguments as there. For a single-label ``task``:
    :func:`~medbackdoor.metrics.singlelabel.single_label_metrics` (all-to-all when ``label`` is ``all-to-all``),
    with ``mean_auroc_clean`` its macro AUROC."""
    if task is not None and task.single_label:
        if condition is not None:
            raise UserError("a source-specific (conditional) trigger is defined for multi-label tasks only")
        m = single_label_metrics(y_true, score_clean, score_triggered, target, all_to_all=label == "all-to-all")
        return {**m, "mean_auroc_clean": m["auroc_macro"]}
    return backdoor_metrics(y_true, score_clean, score_triggered, target, ev.thresholds, ev.epsilons, ev.strict,
                            seed=seed, label=label, carriers=carriers, condition=condition)


def eval_config_of(flat: dict) -> EvalConfig:
    """The :class:`EvalConfig` of a flattened config (dotted keys, as the report reads runs)."""
    return from_dict(EvalConfig, {k.removeprefix("eval."): v for k, v in flat.items() if k.startswith("eval.")},
                     "eval.")
