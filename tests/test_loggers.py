"""``train.log: [tensorboard]``: per-epoch scalars while training, the Figure-1 panel when the run is explained."""

import pytest

from medbackdoor.cli import main
from medbackdoor.loggers import scalar_tag

TINY = ["--set", "dataset.options.n_images=48", "--set", "dataset.options.source_size=64", "--set",
        "image_size=64", "--set", "train.epochs=2", "--set", "train.batch_size=16", "--set", "eval.epsilons=[0.5]"]


def test_scalar_tags_group_columns():
    assert scalar_tag("asr_0.6") == "asr/asr_0.6"
    assert scalar_tag("auroc_mix_0.1") == "auroc_mix/auroc_mix_0.1"
    assert scalar_tag("auroc_nn") == "auroc/auroc_nn"
    assert scalar_tag("auroc_Hernia") == "auroc_per_finding/auroc_Hernia"
    assert scalar_tag("train_loss") == "loss/train_loss"
    assert scalar_tag("something") == "other/something"


def test_tensorboard_scalars_per_epoch_and_figure1_panel(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    assert main(["run", "--config", "quick", *TINY, "--set", "train.log=[tensorboard]",
                 "--set", f"cache_dir={tmp_path / 'cache'}", "--out", str(run)]) == 0
    folder = run / "logs" / "tensorboard"
    acc = EventAccumulator(str(folder), size_guidance={"images": 0, "scalars": 0}).Reload()
    tags = acc.Tags()
    assert {"auroc/auroc_nn", "asr/asr_0.6", "loss/train_loss", "speed/train_images_per_s"} <= set(tags["scalars"])
    steps = [e.step for e in acc.Scalars("auroc/auroc_nn")]
    assert steps == [1, 2]
    csv = (run / "metrics.csv").read_text().splitlines()
    header, last = csv[0].split(","), csv[-1].split(",")
    logged = acc.Scalars("auroc/auroc_nn")[-1].value
    assert logged == pytest.approx(float(last[header.index("auroc_nn")]), abs=1e-6)
    assert any(t.startswith("config") for t in tags["tensors"])  # the run's config, as text

    assert main(["explain", str(run), "--images", "8"]) == 0
    acc = EventAccumulator(str(folder), size_guidance={"images": 0}).Reload()
    assert "explain/figure1" in acc.Tags()["images"]
    image = acc.Images("explain/figure1")[-1]
    assert image.step == 2 and image.width > 100 and image.height > 100
