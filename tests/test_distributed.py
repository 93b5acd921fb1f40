"""Data-parallel runs (torchrun, gloo on this CPU): sampler, sharded scoring, and a real 2-process run."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.utils.data import RandomSampler

from medbackdoor.cli.main import main
from medbackdoor.train.dist import Dist, EpochSampler

TINY = ["dataset.options.n_images=64", "dataset.options.source_size=32", "image_size=32", "train.epochs=2",
        "train.batch_size=16", "eval.epsilons=[0.1,0.5]"]


def test_one_process_sampler_draws_what_a_seeded_random_sampler_draws():
    sampler = EpochSampler(37, seed=3)
    for epoch in (1, 2):
        sampler.set_epoch(epoch)
        ours = list(sampler)
        after = torch.rand(4, generator=sampler.augment_generator())
        g = torch.Generator().manual_seed(3 * 100_003 + epoch)
        assert ours == list(RandomSampler(range(37), generator=g))  # the order the loop used before DDP
        g = torch.Generator().manual_seed(3 * 100_003 + epoch)
        torch.randperm(37, generator=g)
        assert torch.equal(after, torch.rand(4, generator=g))  # augmentation continues the same generator


def test_ranks_split_one_permutation_evenly():
    shards = []
    for rank in range(3):
        s = EpochSampler(10, seed=1, dist=Dist(world=3, rank=rank))
        s.set_epoch(2)
        shards.append(list(s))
    assert [len(x) for x in shards] == [4, 4, 4]  # 10 padded to 12 by wrapping
    one = EpochSampler(10, seed=1)
    one.set_epoch(2)
    whole = list(one)
    assert [x for i in range(4) for x in (shards[0][i], shards[1][i], shards[2][i])] == (whole + whole)[:12]
    s0 = EpochSampler(10, seed=1, dist=Dist(world=3, rank=1))
    s0.set_epoch(2)
    assert not torch.equal(torch.rand(3, generator=s0.augment_generator()),
                           torch.rand(3, generator=torch.Generator().manual_seed(1 * 100_003 + 2)))


def test_evaluation_shards_cover_every_row_once():
    for n in (0, 1, 7, 8, 9):
        parts = [Dist(world=4, rank=r).shard(n) for r in range(4)]
        assert sum((list(range(n))[p] for p in parts), []) == list(range(n))
    assert Dist().gather(np.ones((3, 2)), 3).shape == (3, 2)


def test_nproc_checks_before_starting_anything(tmp_path, capsys):
    assert main(["run", "--nproc", "3", "--out", str(tmp_path / "r"), *sum((["--set", t] for t in TINY), [])]) == 2
    assert "multiple of --nproc 3" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    assert main(["run", "--nproc", "0", "--out", str(tmp_path / "r")]) == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def _cli(out, *extra, nproc=None, env=None):
    cmd = [sys.executable, "-m", "medbackdoor", "run", "--quiet", "--out", str(out)]
    cmd += sum((["--set", t] for t in TINY), []) + list(extra)
    if nproc:
        cmd += ["--nproc", str(nproc)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def _env(tmp_path):
    # one thread per process: two ranks on two cores; a fixed rendezvous port for torchrun --standalone is chosen
    # by torchrun itself
    return {**os.environ, "MEDBACKDOOR_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}


@pytest.mark.slow
def test_two_process_gloo_run_writes_each_file_once_and_matches_one_process(tmp_path):
    env = _env(tmp_path)
    done = _cli(tmp_path / "ddp", nproc=2, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("run complete") == 1  # rank 0 speaks for the run
    single = _cli(tmp_path / "one", env=env)
    assert single.returncode == 0, single.stderr[-2000:]

    ddp, one = tmp_path / "ddp", tmp_path / "one"
    assert sorted(p.name for p in ddp.rglob("*")) == sorted(p.name for p in one.rglob("*"))  # no stray temp files
    manifest = json.loads((ddp / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["distributed"] == {"world_size": 2, "backend": "gloo"}
    a, b = _rows(ddp / "metrics.csv"), _rows(one / "metrics.csv")
    assert [r["epoch"] for r in a] == ["1", "2"]
    # Same data, order and global batch; they differ by BatchNorm statistics (8 images per rank instead of 16),
    # the wrap-around padding of the last shard and the order of float reductions: close, not equal.
    for ra, rb in zip(a, b):
        assert abs(float(ra["train_loss"]) - float(rb["train_loss"])) < 0.05
        assert abs(float(ra["val_loss"]) - float(rb["val_loss"])) < 0.05
    # Every score was gathered: the predictions hold the whole test set, in test order.
    pa, pb = np.load(ddp / "predictions/epoch_002.npz"), np.load(one / "predictions/epoch_002.npz")
    assert pa["score_clean"].shape == pb["score_clean"].shape and np.array_equal(pa["y_true"], pb["y_true"])
    assert np.array_equal(pa["rows"], pb["rows"])


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["resnet50", "vit_b_16"])
def test_two_process_gloo_run_trains_the_other_architectures(arch, tmp_path):
    """DDP over two CPU ranks with each non-DenseNet architecture (the ViT at 32 px: a 2×2 grid of patches)."""
    from medbackdoor.rundir import RunDir

    done = _cli(tmp_path / "ddp", "--set", f"model.arch={arch}", "--set", "train.epochs=1", nproc=2,
                env=_env(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = json.loads((tmp_path / "ddp" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["distributed"]["world_size"] == 2
    assert RunDir(tmp_path / "ddp").config().model.arch == arch


def _spawned(rank: int, port: int, folder: str, cache: str) -> None:
    """One rank of an in-process 2-rank run that logs every file it writes."""
    import medbackdoor._io as io
    from medbackdoor.config import load_config
    from medbackdoor.train import run

    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port), "MEDBACKDOOR_CACHE": cache})
    torch.set_num_threads(1)
    real = io.os.replace

    def logged(src, dst):
        with open(os.path.join(folder, f"writes-{rank}.txt"), "a") as f:
            f.write(f"{dst}\n")
        return real(src, dst)
    io.os.replace = logged
    epochs = int(os.environ.get("TEST_EPOCHS", "2"))
    run(load_config(overrides=[*TINY, f"train.epochs={epochs}"]), os.path.join(folder, "run"), resume=True,
        progress=False)


@pytest.mark.slow
def test_only_rank_zero_writes_and_a_resumed_ddp_run_equals_an_uninterrupted_one(tmp_path, monkeypatch):
    import torch.multiprocessing as mp

    cache = str(tmp_path / "cache")
    for name, plan in (("whole", [2]), ("resumed", [1, 2])):
        folder = tmp_path / name
        folder.mkdir()
        for epochs in plan:
            monkeypatch.setenv("TEST_EPOCHS", str(epochs))
            mp.start_processes(_spawned, args=(_free_port(), str(folder), cache), nprocs=2, start_method="spawn")
    def run_files(rank):  # the data cache is shared: whichever rank takes its lock first may build it
        log = tmp_path / "whole" / f"writes-{rank}.txt"
        return [w for w in log.read_text().split() if "/run/" in w] if log.exists() else []
    writes = run_files(0)
    assert run_files(1) == []
    assert any(w.endswith("metrics.csv") for w in writes) and any(w.endswith("epoch_002.pt") for w in writes)
    whole, resumed = _rows(tmp_path / "whole/run/metrics.csv"), _rows(tmp_path / "resumed/run/metrics.csv")
    volatile = {"seconds", "train_images_per_s"}
    assert [{k: v for k, v in r.items() if k not in volatile} for r in whole] == \
        [{k: v for k, v in r.items() if k not in volatile} for r in resumed]


@pytest.mark.parametrize("bad", ["train.backend=mpi", "train.log=[wandb]"])
def test_bad_distributed_and_logger_keys_are_one_line(bad, tmp_path, capsys):
    assert main(["run", "--out", str(tmp_path / "r"), "--set", bad]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and bad.split("=")[0] in err[0]
