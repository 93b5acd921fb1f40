"""``model.pretrained: xrv:...``: TorchXRayVision DenseNet-121 weights, with random stand-ins (no network)."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from medbackdoor.errors import UserError
from medbackdoor.labels import LABELS
from medbackdoor.models import create_model
from medbackdoor.models.xrv import CACHE_ENV, DEFAULT_TARGETS, XRV_WEIGHTS, XrvInput, is_xrv

CHEXPERT = ("No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
            "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
            "Fracture", "Support Devices")

_UNPICKLED: list[int] = []


def _record():
    _UNPICKLED.append(1)
    return torch.zeros(1)


class _Trap:
    """Pickles as a call to ``_record``: loading the file with a full unpickler would run it."""

    def __reduce__(self):
        return (_record, ())


def xrv_net(seed: int = 1) -> nn.Module:
    """A torchvision DenseNet-121 in xrv's layout (1-channel conv0, 18 outputs), random weights and BN stats."""
    torch.manual_seed(seed)
    net = torchvision.models.densenet121(weights=None)
    net.features.conv0 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    net.classifier = nn.Linear(1024, len(DEFAULT_TARGETS))
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        net.classifier.bias.normal_()
    return net.eval()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """DenseNet forwards on tiny images: one thread is fastest (and spares a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def xrv_state(tmp_path_factory):
    net = xrv_net()
    state = net.state_dict()
    state["op_threshs"] = torch.full((18,), float("nan"))  # what xrv's DenseNet(weights=...).state_dict() holds
    path = tmp_path_factory.mktemp("xrv") / "stand_in.pt"
    torch.save(state, path)
    return net, state, path


def test_loads_features_and_maps_rows_by_name(xrv_state):
    net, state, path = xrv_state
    model = create_model("densenet121", f"xrv:{path}", 14, LABELS)
    assert is_xrv(model) and isinstance(model.input, XrvInput)
    ours = model.state_dict()
    assert ours["features.conv0.weight"].shape == (64, 1, 7, 7)
    for key, value in state.items():
        if key.startswith("features."):
            assert torch.equal(ours[key], value), key
    for i, label in enumerate(LABELS):  # all 14 NIH findings are among xrv's 18
        j = DEFAULT_TARGETS.index(label)
        assert torch.equal(model.classifier.weight[i], state["classifier.weight"][j]), label
        assert torch.equal(model.classifier.bias[i], state["classifier.bias"][j]), label
    info = model.pretrained_info
    assert info["mapped"]["Effusion"] == "Effusion" and info["fresh"] == [] and len(info["targets"]) == 18


def test_state_dict_keys_match_our_densenet(xrv_state):
    plain = create_model("densenet121", "none", 14)
    model = create_model("densenet121", f"xrv:{xrv_state[2]}", 14)
    assert list(model.state_dict()) == list(plain.state_dict())


def test_input_mapping_is_xrv_units():
    x = torch.tensor([0.0, 0.5, 1.0]).view(1, 1, 1, 3)
    assert XrvInput()(x).flatten().tolist() == [-1024.0, 0.0, 1024.0]


def test_output_matches_xrv_style_forward(xrv_state):
    net, _, path = xrv_state
    model = create_model("densenet121", f"xrv:{path}", 14, LABELS).eval()
    torch.manual_seed(0)
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        feats = F.relu(net.features(x * 2048 - 1024))
        ref = net.classifier(F.adaptive_avg_pool2d(feats, (1, 1)).flatten(1))
        out = model(x)
    rows = [DEFAULT_TARGETS.index(label) for label in LABELS]
    torch.testing.assert_close(out, ref[:, rows], rtol=1e-4, atol=1e-4)


def test_chexpert_names_map_and_unknown_labels_stay_fresh(xrv_state):
    _, state, path = xrv_state
    torch.manual_seed(7)
    fresh = create_model("densenet121", "none", 14)
    torch.manual_seed(7)
    model = create_model("densenet121", f"xrv:{path}", 14, CHEXPERT)
    info = model.pretrained_info
    assert info["mapped"]["Pleural Effusion"] == "Effusion"
    assert info["fresh"] == ["No Finding", "Pleural Other", "Support Devices"]
    for i, label in enumerate(CHEXPERT):
        if label in info["fresh"]:
            assert torch.equal(model.classifier.weight[i], fresh.classifier.weight[i]), label
        else:
            j = DEFAULT_TARGETS.index(info["mapped"][label])
            assert torch.equal(model.classifier.weight[i], state["classifier.weight"][j]), label


def test_named_weights_from_cache_use_their_targets(xrv_state, tmp_path, monkeypatch):
    _, state, _ = xrv_state
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    torch.save({"state_dict": state, "targets": list(XRV_WEIGHTS["densenet121-res224-nih"][1])},
               tmp_path / "densenet121-res224-nih.pt")
    model = create_model("densenet121", "xrv:densenet121-res224-nih", 14, CHEXPERT)
    # xrv's NIH weights leave Fracture, Lung Lesion, Lung Opacity and Enlarged Cardiomediastinum untrained ("").
    assert {"Fracture", "Lung Lesion", "Lung Opacity", "Enlarged Cardiomediastinum"} <= set(model.pretrained_info[
        "fresh"])
    assert model.pretrained_info["weights"] == "densenet121-res224-nih"


def test_unknown_name_lists_valid_names():
    with pytest.raises(UserError, match="densenet121-res224-all.*densenet121-res224-mimic_ch"):
        create_model("densenet121", "xrv:unknown-name", 14)


def test_missing_cache_file_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    monkeypatch.setitem(sys.modules, "torchxrayvision", None)  # not installed
    with pytest.raises(UserError) as err:
        create_model("densenet121", "xrv:densenet121-res224-chex", 14)
    message = str(err.value)
    assert "\n" not in message and str(tmp_path) in message and "densenet121-res224-chex.pt" in message


@pytest.mark.parametrize("payload", [lambda: {"x": _Trap()}, lambda: nn.Linear(2, 2)], ids=["trap", "module"])
def test_pickled_file_is_refused_not_unpickled(payload, tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    torch.save(payload(), path)
    with pytest.raises(UserError, match="pickled model.*weights_only") as err:
        create_model("densenet121", f"xrv:{path}", 14)
    assert "\n" not in str(err.value) and not _UNPICKLED
    # the same for xrv's own download (a pickled DenseNet) found in the cache
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    path.rename(tmp_path / XRV_WEIGHTS["densenet121-res224-rsna"][0])
    with pytest.raises(UserError, match="densenet121-res224-rsna.pt"):
        create_model("densenet121", "xrv:densenet121-res224-rsna", 14)
    assert not _UNPICKLED


def test_not_a_densenet_state_dict(tmp_path):
    torch.save({"features.conv0.weight": torch.zeros(64, 1, 7, 7)}, tmp_path / "w.pt")
    with pytest.raises(UserError, match="not an xrv DenseNet-121"):
        create_model("densenet121", f"xrv:{tmp_path / 'w.pt'}", 14)


def test_checkpoint_reloads_without_the_xrv_file(xrv_state, tmp_path):
    model = create_model("densenet121", f"xrv:{xrv_state[2]}", 14).eval()
    ckpt = tmp_path / "epoch_001.pt"
    torch.save({"model": model.state_dict()}, ckpt)
    x = torch.rand(2, 1, 32, 32)
    # as RunDir.load_model does: build with "none", then load the checkpoint's state dict
    again = create_model("densenet121", "none", 14)
    again.load_state_dict(torch.load(ckpt, weights_only=True)["model"])
    # as a pretrained path does
    third = create_model("densenet121", str(ckpt), 14)
    with torch.no_grad():
        ref = model(x)
        for other in (again, third):
            assert is_xrv(other)
            torch.testing.assert_close(other.eval()(x), ref)


def test_label_names_must_fit():
    with pytest.raises(UserError, match="label names"):
        create_model("densenet121", "xrv:densenet121-res224-all", 5)


def test_cli_accepts_xrv_pretrained(tmp_path):
    from medbackdoor.cli._common import config_from_args
    from medbackdoor.cli.main import build_parser

    args = build_parser().parse_args(["run", "--out", str(tmp_path), "--set", "model.pretrained=xrv:/path/w.pt"])
    assert config_from_args(args).model.pretrained == "xrv:/path/w.pt"
