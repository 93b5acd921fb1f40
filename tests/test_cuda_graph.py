"""train.cuda_graph: the graphed training step against the eager one.

The equality check needs CUDA (it runs on the GPU machine: ``python3 tests/test_cuda_graph.py`` or pytest there);
on the CPU the option is ignored and the loss it uses is checked against ``bce_loss``.
"""

from __future__ import annotations

import copy
import sys

import numpy as np
import pytest
import torch

from medbackdoor.train.loop import GraphedStep, autocast, bce_loss, masked_bce

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")


@pytest.mark.parametrize("nan", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_masked_bce_equals_bce_loss(nan, weighted):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 14, generator=g)
    targets = (torch.rand(16, 14, generator=g) < 0.3).float()
    if nan:
        targets[torch.rand(16, 14, generator=g) < 0.2] = float("nan")
    weights = (torch.rand(14, generator=g), torch.rand(14, generator=g)) if weighted else None
    assert torch.allclose(masked_bce(logits, targets, weights), bce_loss(logits, targets, weights), rtol=1e-6)


def test_graphed_step_refuses_the_cpu():
    model = torch.nn.Linear(4, 2)
    with pytest.raises(ValueError, match="CUDA"):
        GraphedStep(model, torch.optim.Adam(model.parameters(), capturable=False))


TINY = ["dataset.options.n_images=48", "dataset.options.source_size=32", "image_size=32", "train.epochs=1",
        "train.batch_size=16", "eval.epsilons=[0.5]"]


def test_cuda_graph_is_ignored_on_the_cpu_and_recorded(tmp_path):
    from medbackdoor.config import load_config
    from medbackdoor.train.runner import run

    manifest = run(load_config(overrides=[*TINY, "train.cuda_graph=true", "train.device=cpu"]), tmp_path / "r")
    assert manifest.cuda_graph is False
    assert manifest.epochs_done == 1


def test_resume_takes_capturable_from_this_device_not_the_checkpoint(tmp_path):
    """A run checkpointed with a capturable optimizer (graphed on CUDA) resumes on the CPU (train.device is
    neutral on resume), and would have failed in Adam's capturable device check before."""
    from medbackdoor.config import load_config
    from medbackdoor.rundir import RunDir
    from medbackdoor.train.runner import run

    run(load_config(overrides=[*TINY, "train.cuda_graph=true", "train.device=cpu"]), tmp_path / "r")
    path = RunDir(tmp_path / "r").checkpoint_path(1)
    state = torch.load(path, weights_only=True)
    for group in state["optimizer"]["param_groups"]:
        group["capturable"] = True
    torch.save(state, path)
    manifest = run(load_config(overrides=[*TINY, "train.cuda_graph=true", "train.device=cpu", "train.epochs=2"]),
                   tmp_path / "r", resume=True)
    assert manifest.epochs_done == 2


def test_graphed_step_needs_a_warmup_step():
    model = torch.nn.Linear(4, 2)
    with pytest.raises(ValueError, match="warm-up"):
        GraphedStep(model, torch.optim.Adam(model.parameters()), warmup=0)


def test_cuda_graph_with_compile_is_one_line_exit_2(tmp_path, capsys):
    from medbackdoor.cli.main import main

    args = ["run", "--out", str(tmp_path / "r")] + sum((["--set", t] for t in
                                                        [*TINY, "train.cuda_graph=true", "train.compile=true"]), [])
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.cuda_graph" in err[0]
    assert not (tmp_path / "r").exists()


def compare(steps: int = 10, batch: int = 16, size: int = 64, lr_drop_at: int = 6, odd_at: int = 8,
            arch: str = "densenet121") -> dict:
    """Train two copies of one model (DenseNet-121 by default) on the same batches, eager and graphed; the largest
    differences.

    Exercises capture after the warm-up, a learning-rate change (recapture) and a batch of another size (eager
    fallback). cuDNN autotuning is off so both take the same kernels.
    """
    from medbackdoor.models import create_model

    torch.backends.cudnn.benchmark = False
    device = torch.device("cuda")
    torch.manual_seed(0)
    eager = create_model(arch, "none", 14, image_size=size).to(device).to(memory_format=torch.channels_last)
    graphed = copy.deepcopy(eager)
    opt_e = torch.optim.Adam(eager.parameters(), lr=1e-3, capturable=True)
    opt_g = torch.optim.Adam(graphed.parameters(), lr=1e-3, capturable=True)
    step = GraphedStep(graphed, opt_g, amp=True)
    g = torch.Generator(device=device).manual_seed(1)
    losses_e, losses_g = [], []
    for i in range(steps):
        if i == lr_drop_at:
            for opt in (opt_e, opt_g):
                for group in opt.param_groups:
                    group["lr"] = 1e-4
        n = batch // 2 if i == odd_at else batch
        x = torch.rand(n, 1, size, size, generator=g, device=device).contiguous(memory_format=torch.channels_last)
        y = (torch.rand(n, 14, generator=g, device=device) < 0.2).float()
        eager.train()
        with autocast(device, True):
            logits = eager(x)
        loss = masked_bce(logits.float(), y)
        opt_e.zero_grad(set_to_none=True)
        loss.backward()
        opt_e.step()
        losses_e.append(loss.item())
        graphed.train()
        losses_g.append(step(x, y).item())
    weight_diff = max((a - b).abs().max().item() for a, b in zip(eager.state_dict().values(),
                                                                  graphed.state_dict().values(), strict=True)
                      if a.is_floating_point())
    loss_diff = float(np.max(np.abs(np.array(losses_e) - np.array(losses_g))))
    return {"losses_eager": losses_e, "losses_graphed": losses_g, "max_loss_diff": loss_diff,
            "max_weight_diff": weight_diff, "captures": step.captures, "eager_steps": step.eager_steps}


@cuda
@pytest.mark.parametrize("arch", ["densenet121", "resnet50", "vit_b_16"])
def test_graphed_training_matches_eager(arch):
    r = compare(arch=arch)
    assert r["captures"] == 2  # once after the warm-up, once after the learning-rate change
    assert r["eager_steps"] == 4  # three warm-up steps and the odd-sized batch
    assert r["max_loss_diff"] < 1e-2, r
    assert r["max_weight_diff"] < 1e-2, r


if __name__ == "__main__":  # the GPU machine may have no pytest: python3 tests/test_cuda_graph.py [ARCH ...]
    failed = 0
    for arch in sys.argv[1:] or ["densenet121"]:
        result = compare(arch=arch)
        print(arch, result)
        ok = result["captures"] == 2 and result["eager_steps"] == 4 and result["max_loss_diff"] < 1e-2 \
            and result["max_weight_diff"] < 1e-2
        print(f"cuda graph check ({arch}):", "ok" if ok else "FAILED")
        failed += not ok
    sys.exit(1 if failed else 0)
