"""The defense process: ``python -m medbackdoor.defenses.child``, run by :mod:`medbackdoor.defenses.isolation`.

It takes no argument and starts in an empty folder of its own, with an environment reduced to what Python and
torch need. It imports torch and the defenses once, then reads requests from its standard input, one JSON line
each: a request names the folder of the defender's materials and what to run. For every request it forks a fresh
process (where the platform can fork; else it serves one request itself), which changes into that folder, builds
one :class:`~medbackdoor.defenses.base.Defender` from the materials, runs the requested defenses in order (so
features and scores are computed once for all of them), writes ``answers/index.json`` and one folder of arrays per
defense (``answers/NAME/``), and exits. The forked process holds what this process held (imported modules and
request lines that name materials folders) and the materials; nothing else. A defense that fails is recorded
(its message, and its traceback unless it is a one-line :class:`UserError`) and the next runs. When the forked
process has exited this process prints ``TOKEN EXITCODE`` (the request's token) on its own line.

What each kind answers (arrays in the materials' orders: the shuffled training set, the mixed test inputs):

* data: ``scores.npy``, ``flagged.npy``, ``columns.npz`` (extra per-sample columns), ``info``;
* input: ``scores.npy`` and ``flagged.npy`` of the test inputs, the calibrated ``threshold``;
* model: ``scores.npy`` and ``flagged.npy`` per label, ``masks.npy`` / ``patterns.npy`` when it reverses triggers;
* mitigation: ``before.npy`` and ``after.npy``, the model's scores of the test inputs before and after the repair
  (purified inputs, a repaired or a retrained model); a defense that trains also ``losses.npy`` and
  ``isolated.npy`` (its own isolation of the training set).
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from medbackdoor._io import plain
from medbackdoor.errors import UserError


def main() -> int:
    """Serve requests from standard input until it closes (see the module docstring)."""
    import torch  # noqa: F401 - imported once here, inherited by every forked process

    import medbackdoor.defenses  # noqa: F401 - the same for the defenses (and the models they build)

    home = Path.cwd()
    for line in sys.stdin:
        if not line.strip():
            continue
        message = json.loads(line)
        code = _fork(message) if hasattr(os, "fork") else _serve(message)
        os.chdir(home)
        print(f"{message['token']} {code}", flush=True)
    return 0


def _fork(message: dict) -> int:
    """Serve ``message`` in a forked process; its exit code."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the forked process (its coverage is not collected)
        code = _serve(message)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _serve(message: dict) -> int:
    """One request, in its materials folder: ``answers/index.json`` written, 0 returned (1 if it broke)."""
    try:
        folder = Path(message["folder"])
        os.chdir(folder)
        import torch

        torch.set_num_threads(int(message.get("threads", 1)))
        request = message["request"]
        answers = folder / "answers"
        answers.mkdir(exist_ok=True)
        if request["mode"] == "describe":
            index = {"describe": [_describe(entry) for entry in request["defenses"]]}
        else:
            index = _defend(folder, request, answers)
        (answers / "index.json").write_text(json.dumps(index, default=plain))
        return 0
    except BaseException:  # noqa: BLE001 - the parent reports the traceback
        traceback.print_exc()
        return 1


def _describe(entry: dict) -> dict:
    from dataclasses import asdict

    from medbackdoor.defenses.isolation import describe_here

    try:
        return asdict(describe_here(entry["method"], entry["options"]))
    except UserError as exc:
        return {"error": str(exc)}


def _defend(folder: Path, request: dict, answers: Path) -> dict:
    t0 = time.perf_counter()
    d = load_defender(folder, request)
    test = np.load(folder / "test_images.npy", mmap_mode="r") if (folder / "test_images.npy").is_file() else None
    index = {"startup_seconds": time.perf_counter() - t0, "defenses": []}
    for entry in request["defenses"]:
        out = answers / entry["name"]
        out.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        result = {"name": entry["name"]}
        try:
            from medbackdoor.defenses import DEFENSES

            defense = DEFENSES.create_checked(entry["method"], dict(entry["options"]),
                                              what=f"defense {entry['method']}")
            result.update(KINDS[defense.kind](defense, d, test, out))
            result["status"] = "complete"
        except UserError as exc:
            result.update(status="user_error", error=str(exc))
        except Exception as exc:  # noqa: BLE001 - recorded; the next defense runs
            result.update(status="failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
        result["seconds"] = time.perf_counter() - start
        index["defenses"].append(result)
    return index


def load_defender(folder: Path, request: dict):
    """The :class:`Defender` of the materials in ``folder``: the model built from its recipe and weights, the
    images as read-only memmaps."""
    import torch

    from medbackdoor.config import TrainConfig, from_dict
    from medbackdoor.defenses.base import Defender, Images
    from medbackdoor.inference import pick_device

    device = pick_device(request["device"])
    recipe = json.loads((folder / "model.json").read_text())
    state = torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
    model = build_model(recipe, state).to(device)
    training = request.get("training")
    return Defender(
        model=model,
        train_images=Images(np.load(folder / "train_images.npy", mmap_mode="r")),
        train_labels=np.load(folder / "train_labels.npy"),
        holdout_images=Images(np.load(folder / "holdout_images.npy", mmap_mode="r")),
        holdout_labels=np.load(folder / "holdout_labels.npy"),
        label_names=request["label_names"], device=device, batch_size=int(request["batch_size"]),
        seed=int(request["seed"]), dataset=request.get("dataset", ""),
        training=None if training is None else from_dict(TrainConfig, training),
        new_model=lambda: build_model(recipe, None, pretrained=True).to(device),
        task=request.get("task", "multilabel"),
    )


def build_model(recipe: dict, state: dict | None, pretrained: bool = False):
    """The model of ``recipe`` (``arch``, ``options``, ``image_size``, ``num_classes``, ``channels_last``,
    ``pretrained``) with ``state`` loaded; ``state`` None: a fresh model, from the run's pretrained weights when
    ``pretrained``."""
    from medbackdoor.inference import set_layout
    from medbackdoor.models import create_model

    model = create_model(recipe["arch"], recipe.get("pretrained", "none") if pretrained else "none",
                         int(recipe["num_classes"]), label_names=recipe.get("label_names"),
                         image_size=recipe["image_size"], options=recipe.get("options") or {})
    if state is not None:
        model.load_state_dict(state)
    return set_layout(model, bool(recipe.get("channels_last", False))).eval()


# --- one function per kind -------------------------------------------------------------------------------------------

def _data(defense, d, test, out: Path) -> dict:
    det = defense.suspicion(d)
    scores, flagged = np.asarray(det.scores, np.float64), np.asarray(det.flagged, bool)
    if len(scores) != len(d.train_images) or len(flagged) != len(scores):
        raise RuntimeError(f"data defense returned {len(scores)} scores and {len(flagged)} flags for "
                           f"{len(d.train_images)} samples")
    np.save(out / "scores.npy", scores)
    np.save(out / "flagged.npy", flagged)
    np.savez(out / "columns.npz", **{k: np.asarray(v) for k, v in det.columns.items()})
    return {"info": det.info}


def _input(defense, d, test, out: Path) -> dict:
    if test is None:
        raise RuntimeError("no test inputs were given to an input defense")
    from medbackdoor.defenses.base import Images

    threshold = defense.calibrate(d)
    scores = np.asarray(defense.score(d, Images(test)), np.float64)
    if len(scores) != len(test):
        raise RuntimeError(f"input defense returned {len(scores)} scores for {len(test)} inputs")
    np.save(out / "scores.npy", scores)
    np.save(out / "flagged.npy", np.asarray(defense.flag(scores), bool))
    return {"threshold": float(threshold), "calibration": defense.calibration_rule,
            "calibration_images": int(defense.calibrated_on), "info": getattr(defense, "info", None) or None}


def _model(defense, d, test, out: Path) -> dict:
    scan = defense.scan(d)
    np.save(out / "scores.npy", np.asarray(scan.scores, np.float64))
    np.save(out / "flagged.npy", np.asarray(scan.flagged, bool))
    for key in ("masks", "patterns"):
        if scan.info.get(key) is not None:
            np.save(out / f"{key}.npy", np.asarray(scan.info[key], np.float32))
    return {"backdoored": bool(scan.backdoored),
            "info": {k: v for k, v in scan.info.items() if k not in ("masks", "patterns")}}


def _mitigation(defense, d, test, out: Path) -> dict:
    if test is None:
        raise RuntimeError("no test inputs were given to a mitigation")
    np.save(out / "before.npy", d.outputs(test))
    if getattr(defense, "trains", False):
        model, losses, isolated = defense.train(d)
        np.save(out / "losses.npy", np.asarray(losses, np.float64))
        np.save(out / "isolated.npy", np.asarray(isolated, np.int64))
        after = _scores(d, model, test, lambda x: x)
    else:
        repaired = defense.repair(d)
        after = _scores(d, repaired if repaired is not None else d.model, test, lambda x: defense.purify(d, x))
    np.save(out / "after.npy", after)
    return {"info": getattr(defense, "info", None) or {}}


def _scores(d, model, images, transform) -> np.ndarray:
    """Sigmoid scores of ``model`` on ``transform(images)``, a chunk at a time."""
    from medbackdoor.inference import predict

    parts = [predict(model, np.asarray(transform(np.asarray(images[lo : lo + 256]))), d.device, d.batch_size)
             for lo in range(0, len(images), 256)]
    return np.concatenate(parts) if parts else np.zeros((0, len(d.label_names)), np.float32)


KINDS = {"data": _data, "input": _input, "model": _model, "mitigation": _mitigation}


if __name__ == "__main__":
    raise SystemExit(main())
