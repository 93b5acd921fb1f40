"""The paper's protocol at NIH scale on one GPU, measured in parts (issue 21), with one time budget.

Phases (``--phases``, in this order; each runs in its own child process so its peak host RSS and GPU memory are its
own; a phase that fails or runs out of time is recorded and the next one runs):

* ``cache``: the preprocessing cache of a synthetic dataset with NIH's size and split sizes (112,120 images; test
  25,596 = 22.8%, validation 10% of the rest = 7.7%) at the model's input size: build time, bytes, peak RSS.
  Synthetic sources are rendered at ``--source-size`` (256 px by default: the paper's pipeline reads 1,024-px
  files, but what the model sees is the 224-px resize, and rendering 112,120 images at 1,024 px would measure the
  synthetic renderer, not the toolkit; the real NIH cost of decoding 1,024-px PNGs is in docs/benchmarks.md's
  loader numbers).
* ``epoch``: one run of the ``paper`` config on that dataset (DenseNet-121 from scratch: the GPU machine reaches
  no weight hub; bf16, channels_last), ``--epochs`` epochs: training and evaluation seconds per epoch, peak RSS
  and GPU memory; then ``--jobs`` copies at once on the same GPU (epoch seconds of each), and the projection of
  ``reproduce --protocol paper`` (its runs × 12 epochs) at one run at a time and at ``--jobs``.
* ``explain``: the Figure-1 pair (the 3×3 square and its clean control) trained at 224 px on ``--explain-images``
  synthetic images, ``medbackdoor explain`` at the last (7×7) and middle (14×14) layers, and the saliency,
  SentiNet and Februus defenses on the trigger model.
* ``throughput``: ``benchmarks/train_throughput.py`` at 224 px for each ``--batch-sizes``: eager, the whole step as
  one CUDA graph (``train.cuda_graph``) and ``torch.compile(mode="max-autotune")`` (which captures CUDA graphs
  itself), each with its ratio to the model-only bound.

Everything is written to ``OUT/nih_scale.json`` after every phase (temp file, then rename). ``--tiny`` runs every
phase at a size a CPU finishes in minutes (the test in tests/test_benchmarks_nih_scale.py does).

    python3 benchmarks/nih_scale.py --out /tmp/nih-scale --budget 540        # the GPU machine
    python3 benchmarks/nih_scale.py --out /tmp/nih-scale --tiny               # a CPU, to check the script
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NIH_IMAGES = 112_120
NIH_TEST = 25_596 / NIH_IMAGES  # the official test list
NIH_VAL = 0.1 * (1 - NIH_TEST)  # 10% of train_val, as the paper config carves it
PHASES = ("cache", "epoch", "explain", "throughput")


def dataset_overrides(args) -> list[str]:
    return ["dataset.name=synthetic", "dataset.split=auto", f"dataset.val_fraction={NIH_VAL:.4f}",
            f"dataset.options.n_images={args.images}", f"dataset.options.source_size={args.source_size}",
            f"dataset.options.test_fraction={NIH_TEST:.4f}", f"image_size={args.image_size}"]


def paper_overrides(args) -> list[str]:
    return [*dataset_overrides(args), "model.pretrained=none", f"train.epochs={args.epochs}",
            f"train.batch_size={args.batch_size}", f"train.workers={args.workers}", f"cache_dir={args.work}/cache"]


# --- the phases, each in a child process ---------------------------------------------------------------------------

def phase_cache(args) -> dict:
    from medbackdoor.cli._common import dataset_from_config, preprocess_from_config
    from medbackdoor.config import load_config
    from medbackdoor.data.cache import build_cache, cache_path

    config = load_config("paper", paper_overrides(args))
    dataset, prep = dataset_from_config(config), preprocess_from_config(config)
    path = cache_path(dataset, config.image_size, prep, config.cache_dir)
    t0 = time.perf_counter()
    info = build_cache(dataset, config.image_size, prep, path, args.workers or None)
    seconds = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) if Path(path).is_dir() \
        else Path(path).stat().st_size
    return {"images": int(info["images"]), "source_size": args.source_size, "image_size": args.image_size,
            "seconds": round(seconds, 1), "images_per_second": round(info["images"] / seconds, 1),
            "bytes": int(size), "splits": {s: int((dataset.splits == s).sum()) for s in ("train", "val", "test")}}


def phase_epoch(args, out: Path) -> dict:
    import torch

    from medbackdoor.config import load_config
    from medbackdoor.train import run

    config = load_config("paper", paper_overrides(args))
    manifest = run(config, out, progress=False)
    epochs = {int(k): v for k, v in manifest.timings.get("epochs", {}).items()}
    rows = {e: {"seconds": round(v["seconds"], 2), "train_seconds": round(v["train_seconds"], 2),
                "eval_seconds": round(v["seconds"] - v["train_seconds"], 2)} for e, v in sorted(epochs.items())}
    gpu = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0
    return {"epochs": rows, "data_seconds": round(manifest.timings.get("data_seconds", 0.0), 2),
            "train_samples": manifest.dataset.get("train_samples"), "device": manifest.device,
            "gpu_peak_bytes": int(gpu)}


def phase_explain(args, out: Path) -> dict:
    from medbackdoor.config import load_config
    from medbackdoor.defenses.runner import defend
    from medbackdoor.explain.run_explain import explain_run
    from medbackdoor.rundir import RunDir
    from medbackdoor.train import run

    small = argparse.Namespace(**{**vars(args), "images": args.explain_images, "epochs": args.explain_epochs})
    result = {"images": args.explain_images, "epochs": args.explain_epochs, "layers": {}}
    for name, extra in (("trigger", []), ("clean", ["trigger.fraction=0.0"])):
        folder = out / name
        run(load_config("paper", [*paper_overrides(small), *extra]), folder, resume=True, progress=False)
        explain_run(folder, epochs=[args.explain_epochs], images=args.explain_cam_images)
        for row in _csv(RunDir(folder).localisation_path):
            key = f"{name}/{row['layer']}/{row['version']}/{row['quantity']}"
            result["layers"][key] = float(row["value"])
    result["defenses"] = {}
    for method in ("saliency", "sentinet", "februus"):
        s = defend(out / "trigger", method)
        result["defenses"][method] = {"auroc": (s.detection or {}).get("auroc"), "after": s.after,
                                      "seconds": s.seconds}
    return result


def _csv(path: Path) -> list[dict]:
    import csv

    with open(path) as f:
        return list(csv.DictReader(f))


def phase_throughput(args) -> dict:
    rows = []
    variants = (("eager", []), ("cuda_graph", ["--cuda-graph"]),
                ("compile_max_autotune", ["--compile", "--compile-mode", "max-autotune"]))
    for batch in args.batch_sizes:
        for name, flags in variants:
            if args.tiny and name != "eager":
                continue
            cmd = [sys.executable, str(ROOT / "benchmarks" / "train_throughput.py"), "--image-size",
                   str(args.image_size), "--batch-size", str(batch), "--steps", str(args.steps), "--warmup", "3",
                   "--workers", str(args.workers), "--json", str(Path(args.work) / "throughput.jsonl"), *flags]
            t0 = time.perf_counter()
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.step_timeout, env=_env())
            rows.append({"batch": batch, "variant": name, "rc": done.returncode,
                         "seconds": round(time.perf_counter() - t0, 1), "tail": done.stdout.strip()[-300:]
                         or done.stderr.strip()[-300:]})
    return {"runs": rows}


# --- the driver ------------------------------------------------------------------------------------------------------

def _env() -> dict:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}


def _write(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


def child(args) -> None:
    """Run one phase in this process and print its JSON result (with this process's peak RSS) as the last line."""
    import resource

    import torch

    out = Path(args.work) / args.child
    if args.child == "cache":
        result = phase_cache(args)
    elif args.child.startswith("epoch"):
        result = phase_epoch(args, out)
    elif args.child == "explain":
        result = phase_explain(args, out)
    else:
        result = phase_throughput(args)
    result["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if torch.cuda.is_available():
        result["gpu"] = torch.cuda.get_device_name()
    print(json.dumps(result, default=str))


def spawn(args, phase: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, *args.argv, "--child", phase], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env())


def collect(proc: subprocess.Popen, limit: float) -> dict:
    try:
        stdout, stderr = proc.communicate(timeout=max(limit, 1))
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        return {"status": "timed out", "limit_s": round(limit), "stderr_tail": stderr[-800:]}
    lines = [line for line in stdout.strip().splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        return {"status": "failed", "rc": proc.returncode, "stderr_tail": stderr[-1500:]}
    return {"status": "ok", **json.loads(lines[-1])}


def projection(epoch: dict, jobs: dict | None, runs: int, epochs: int) -> dict:
    """Hours for ``runs`` × ``epochs`` from the measured epoch seconds (the mean after the first epoch when there
    are several: the first holds compilation and warm-up)."""
    def mean_epoch(result: dict) -> float | None:
        secs = [v["seconds"] for _, v in sorted(result.get("epochs", {}).items(), key=lambda kv: int(kv[0]))]
        return (sum(secs[1:]) / len(secs[1:]) if len(secs) > 1 else secs[0]) if secs else None

    one = mean_epoch(epoch)
    out = {"runs": runs, "epochs_per_run": epochs, "epoch_seconds_one_job": one}
    if one:
        out["hours_one_job"] = round(runs * (epochs * one + epoch.get("data_seconds", 0)) / 3600, 2)
    if jobs and jobs.get("per_job"):
        secs = [mean_epoch(r) for r in jobs["per_job"] if r.get("status") == "ok"]
        secs = [s for s in secs if s]
        if secs:
            k = len(jobs["per_job"])
            out[f"epoch_seconds_{k}_jobs"] = round(max(secs), 2)
            out[f"hours_{k}_jobs"] = round(runs * epochs * max(secs) / k / 3600, 2)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="where nih_scale.json goes")
    p.add_argument("--work", default=None, help="scratch folder (cache, runs); default OUT/work")
    p.add_argument("--phases", default=",".join(PHASES))
    p.add_argument("--budget", type=float, default=540, help="seconds for all phases together")
    p.add_argument("--images", type=int, default=NIH_IMAGES)
    p.add_argument("--source-size", type=int, default=256)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--epochs", type=int, default=2, help="epochs of the measured paper run")
    p.add_argument("--batch-size", type=int, default=32, help="the paper's batch")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--jobs", type=int, default=2, help="paper runs at once on the GPU for the --jobs measurement")
    p.add_argument("--explain-images", type=int, default=4000)
    p.add_argument("--explain-epochs", type=int, default=4)
    p.add_argument("--explain-cam-images", type=int, default=200)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64, 128, 256])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--step-timeout", type=float, default=150)
    p.add_argument("--tiny", action="store_true", help="every phase at a CPU size (checks the script)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    args.argv = argv
    if args.tiny:
        args.images, args.source_size, args.image_size, args.epochs = 300, 64, 64, 1
        args.batch_size, args.workers, args.jobs, args.explain_images, args.explain_epochs = 16, 0, 2, 200, 1
        args.explain_cam_images, args.batch_sizes, args.steps = 20, [8], 2
    args.work = args.work or str(args.out / "work")
    if args.child:
        child(args)
        return 0
    phases = [x for x in args.phases.split(",") if x]
    bad = sorted(set(phases) - set(PHASES))
    if bad:
        print(f"nih_scale: unknown phase {bad[0]}; phases: {', '.join(PHASES)}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    report = {"args": {k: v for k, v in vars(args).items() if k not in ("child", "argv")}, "phases": {}}
    path = args.out / "nih_scale.json"
    t0 = time.monotonic()

    def left() -> float:
        return args.budget - (time.monotonic() - t0)

    # the cache is shared by every later phase that trains at this size, so it goes first
    share = {"cache": 0.3, "epoch": 0.35, "explain": 0.2, "throughput": 0.15}
    for phase in phases:
        limit = max(30.0, min(left(), share[phase] * args.budget + max(0.0, left() - args.budget * sum(
            share[q] for q in phases[phases.index(phase):]))))
        if left() < 20:
            report["phases"][phase] = {"status": "skipped: no time left"}
            continue
        started = time.monotonic()
        if phase == "epoch":
            result = collect(spawn(args, "epoch"), limit * 0.6)
            if args.jobs > 1 and left() > 30:
                procs = [spawn(args, f"epoch-job{i}") for i in range(args.jobs)]
                jobs = {"per_job": [collect(proc, max(left(), 1)) for proc in procs]}
                result["jobs"] = jobs
            from medbackdoor.study.sweep import load_sweep

            _, runs = load_sweep("paper")
            result["projection"] = projection(result, result.get("jobs"), len(runs), 12)
        else:
            result = collect(spawn(args, phase), limit)
        result["wall_s"] = round(time.monotonic() - started, 1)
        report["phases"][phase] = result
        _write(path, report)
        print(f"{phase}: {result.get('status')} in {result['wall_s']} s", flush=True)
    _write(path, report)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
