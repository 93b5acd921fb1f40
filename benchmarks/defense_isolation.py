"""What running defenses in a process of their own costs, against running their hooks in this process.

Trains a run of the ``quick`` config (64 px, one epoch unless ``--epochs``) into ``--workdir``, then times, on its
last checkpoint and with the same defender materials:

* the baseline: a Defender built in this process from the materials, and each defense's hook called on it (the
  features computed once, shared by the defenses, as in the child);
* ``defend_run``: the materials written, the request served by a fresh process forked from the defense process,
  every defense answered and scored; first with the defense process cold (its imports paid by this call), then
  warm (as for every later run of a ``defend`` call, a sweep worker or a test session).

Prints seconds per run and per defense, the overhead (``defend_run`` minus the baseline) per run and per defense,
and the ratio. Usage: ``python benchmarks/defense_isolation.py --workdir /tmp/iso [--defenses spectral strip ...]``.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from medbackdoor.config import load_config
from medbackdoor.defenses.base import DEFENSES, Images
from medbackdoor.defenses.child import load_defender
from medbackdoor.defenses.isolation import PROCESS
from medbackdoor.defenses.runner import DefenseRequest, _materials, _training_recipe, defend_run
from medbackdoor.inference import predict
from medbackdoor.run import Run
from medbackdoor.train import run as train_run

DEFAULTS = ("spectral", "spectre", "activation-clustering", "strip", "scale-up", "fine-pruning")


def baseline(run: Run, methods: list[str], holdout: int) -> tuple[float, dict[str, float]]:
    """Seconds to build the Defender in this process and run every hook (and each hook's own seconds)."""
    folder = Path(tempfile.mkdtemp(prefix="bench-materials-"))
    try:
        start = time.perf_counter()
        m = _materials(run, folder, run.resolve_epoch(), holdout, 0, with_test=True)
        request = {"device": "cpu", "batch_size": run.config.eval.batch_size, "seed": m.seed,
                   "label_names": list(run.label_names), "training": _training_recipe(run)}
        d = load_defender(folder, request)
        test = Images(np.load(folder / "test_images.npy", mmap_mode="r"))
        each = {}
        for method in methods:
            t0 = time.perf_counter()
            defense = DEFENSES.create_checked(method, {})
            if defense.kind == "data":
                defense.suspicion(d)
            elif defense.kind == "input":
                defense.calibrate(d)
                defense.flag(defense.score(d, test))
            elif defense.kind == "model":
                defense.scan(d)
            else:  # as the child does: the test inputs scored before and after the repair
                d.outputs(test)
                predict(defense.repair(d) or d.model, test[0 : len(test)], d.device, d.batch_size)
            each[method] = time.perf_counter() - t0
        return time.perf_counter() - start, each
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--defenses", nargs="+", default=list(DEFAULTS))
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--holdout", type=int, default=200)
    args = parser.parse_args()
    folder = args.workdir / "run"
    config = load_config("quick", [f"train.epochs={args.epochs}", f"cache_dir={args.workdir / 'cache'}"])
    train_run(config, folder, resume=True, progress=False)
    run = Run(folder)
    _ = run.data  # built once, outside both timings
    base_total, base_each = baseline(run, args.defenses, args.holdout)
    PROCESS.stop()
    start = time.perf_counter()
    cold = defend_run(run, [DefenseRequest(args.defenses[0], holdout=args.holdout)], force=True)[0]
    cold_total = time.perf_counter() - start
    start = time.perf_counter()
    answers = defend_run(run, [DefenseRequest(m, holdout=args.holdout) for m in args.defenses], force=True)
    total = time.perf_counter() - start
    failed = [a for a in [cold, *answers] if isinstance(a, BaseException)]
    if failed:
        raise SystemExit(f"a defense failed: {failed[0]}")
    timings = answers[0].timings
    n = len(args.defenses)
    print(f"quick config, {config.image_size} px, {len(run.data.train)} training samples, holdout {args.holdout}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'defense':<24}{'hook here (s)':>14}{'in the child (s)':>18}")
    for method, answer in zip(args.defenses, answers):
        print(f"{method:<24}{base_each[method]:>14.2f}{answer.timings['defense_seconds']:>18.2f}")
    print(f"materials written          : {timings['materials_seconds']:.2f} s")
    print(f"child process (wall)       : {timings['child_seconds']:.2f} s, of which start-up after imports "
          f"{timings['startup_seconds']:.2f} s")
    print(f"cold (imports paid)        : {cold_total:.2f} s for {args.defenses[0]} against its hook's "
          f"{base_each[args.defenses[0]]:.2f} s: {cold_total - base_each[args.defenses[0]]:.2f} s once per process")
    print(f"baseline, this process     : {base_total:.2f} s for {n} defenses")
    print(f"defend_run, isolated, warm : {total:.2f} s for {n} defenses (scoring included)")
    print(f"overhead per run           : {total - base_total:.2f} s; per defense {(total - base_total) / n:.2f} s "
          f"(the difference of two timings of the same defenses: the defenses' own run-to-run spread is in it)")
    print(f"ratio isolated / baseline  : {total / base_total:.2f}")
    own = sum(a.timings["defense_seconds"] for a in answers)
    direct = timings["materials_seconds"] + timings["child_seconds"] - own
    print(f"isolation itself, warm     : {direct:.2f} s per run = materials {timings['materials_seconds']:.2f} s + "
          f"the request's process beyond the defenses' own {timings['child_seconds'] - own:.2f} s "
          f"(fork, Defender built, answers written); {direct / n:.2f} s per defense")


if __name__ == "__main__":
    main()
