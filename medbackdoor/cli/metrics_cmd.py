"""``medbackdoor metrics PRED.npz``: the paper's metrics from saved predictions."""

from __future__ import annotations

import argparse

from medbackdoor.cli._common import print_json
from medbackdoor.labels import LABEL_POLICIES, LABELS
from medbackdoor.metrics import backdoor_metrics, load_predictions


def add_parser(sub) -> None:
    p = sub.add_parser("metrics", help="ASR and AUROC-NN/TT/TN (and mixed-ε AUROC) from a predictions file; a "
                       "single-label run's accuracy, balanced accuracy, macro AUROC, ASR and R-Acc")
    p.add_argument("predictions", help="npz with y_true, score_clean, score_triggered (N×C) and target")
    p.add_argument("--threshold", type=float, nargs="+", default=[0.6, 0.9], help="ASR confidences p")
    p.add_argument("--epsilon", type=float, nargs="*", default=[], help="fractions ε of triggered test images")
    p.add_argument("--strict", action="store_true", help="ASR counts scores > p (the paper's code), not ≥ p")
    p.add_argument("--seed", type=int, default=0, help="seeds which test images are triggered for ε")
    p.add_argument("--label", choices=LABEL_POLICIES, default=None,
                   help="the run's label policy (default: the one saved in the file, else onehot); with add, "
                        "AUROC-TT/TN are taken on the target-negative images only")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    pred = load_predictions(args.predictions)
    label = args.label or (str(pred["label"]) if "label" in pred else "onehot")
    if "task" in pred and str(pred["task"]) in ("multiclass", "binary"):
        return _single_label(args, pred, label)
    carriers = pred["carriers"].astype(bool) if "carriers" in pred else None  # a label-only trigger's carriers
    condition = pred["condition"].astype(bool) if "condition" in pred else None  # a source-specific trigger's
    result = backdoor_metrics(pred["y_true"], pred["score_clean"], pred["score_triggered"], int(pred["target"]),
                              args.threshold, args.epsilon, args.strict, args.seed, label=label, carriers=carriers,
                              condition=condition)
    result["label"] = label
    names = [str(n) for n in pred["label_names"]] if "label_names" in pred else (
        list(LABELS) if pred["y_true"].shape[1] == len(LABELS) else None)
    result["target"] = names[int(pred["target"])] if names else int(pred["target"])
    result["images"] = int(pred["y_true"].shape[0])
    if args.json:
        print_json(result)
        return 0
    print(f"{result['images']} test images, target {result['target']}")
    for p, value in result["asr"].items():
        print(f"ASR(p={p}){' strict' if args.strict else ''}: {value:.3f}")
    if condition is not None:  # where a source-specific backdoor should stay silent
        for p, value in result["asr_off"].items():
            print(f"ASR off the condition (p={p}): {value:.3f} ({int((~condition).sum())} images)")
    for key in ("auroc_nn", "auroc_tt", "auroc_tn"):
        print(f"{key.upper().replace('_', '-')}: {result[key]:.3f}")
    for eps, value in result["auroc_mix"].items():
        print(f"AUROC mixed ε={eps}: {value:.3f}")
    return 0


def _single_label(args: argparse.Namespace, pred: dict, label: str) -> int:
    """A single-label run's predictions: accuracy, balanced accuracy, macro AUROC, ASR and R-Acc (by argmax)."""
    from medbackdoor.metrics.singlelabel import single_label_metrics

    result = single_label_metrics(pred["y_true"], pred["score_clean"], pred["score_triggered"], int(pred["target"]),
                                  all_to_all=label == "all-to-all")
    names = [str(n) for n in pred["label_names"]] if "label_names" in pred else None
    result.update({"task": str(pred["task"]), "label": label, "images": int(pred["y_true"].shape[0]),
                   "target": names[int(pred["target"])] if names else int(pred["target"])})
    if args.json:
        print_json(result)
        return 0
    print(f"{result['images']} test images, {result['task']} task, target {result['target']}")
    for key, name in (("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"),
                      ("auroc_macro", "macro AUROC"), ("asr", "ASR (argmax)"), ("racc", "R-Acc")):
        print(f"{name}: {result[key]:.3f}")
    return 0
