"""Every registered model (and a timm CNN and a timm transformer, when timm is installed) declares what the toolkit
needs (:class:`~medbackdoor.models.info.ModelInfo`) and goes through what reads it: Grad-CAM at ``last`` and
``middle``, the feature vector, pruning's channel axis, the normalisation layers, the size rule, a checkpoint's
round trip. A model is checked here by being registered, with no test edits."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

from medbackdoor.config import load_config
from medbackdoor.defenses.fine_pruning import ChannelMask
from medbackdoor.errors import UserError
from medbackdoor.explain.cam import grad_cam, resolve_layer
from medbackdoor.models import MODELS, arch_info, create_model
from medbackdoor.models.info import (
    LAYER_ROLES,
    ModelInfo,
    channel_axis,
    feature_vector,
    layer_name,
    model_info,
    norm_layers,
    to_maps,
)

pytestmark = pytest.mark.usefixtures("one_thread")

HAVE_TIMM = importlib.util.find_spec("timm") is not None
TIMM = ["timm:resnet18", "timm:vit_tiny_patch16_224"]
TIMM_ARCHS = [pytest.param(a, marks=pytest.mark.skipif(not HAVE_TIMM, reason="timm not installed")) for a in TIMM]


def _size(info: ModelInfo) -> int:
    """The smallest input with a map of at least 2×2 at the last layer where the size rule allows (a smaller
    model is quicker; 2×2 lets a map have a maximum somewhere)."""
    return max(2 * info.min_size, 2 * info.size_multiple, 32)


@pytest.fixture(scope="module")
def built():
    cache = {}

    def get(arch):
        if arch not in cache:
            probe = create_model(arch, image_size=64)  # timm: metadata is read from the built model
            size = _size(model_info(probe))
            torch.manual_seed(0)
            cache[arch] = (create_model(arch, image_size=size).eval(), size)
        return cache[arch]

    return get


@pytest.mark.registry("model", "arch", extra=TIMM_ARCHS)
def test_model_declares_its_layers_and_gives_maps_there(arch, built):
    model, size = built(arch)
    info = model_info(model)
    assert info is not None and set(LAYER_ROLES) <= set(info.layers)
    modules = dict(model.named_modules())
    assert all(info.layers[role] in modules for role in LAYER_ROLES)
    seen = {}
    hooks = [resolve_layer(model, role).register_forward_hook(
        lambda _m, _i, out, role=role: seen.__setitem__(role, out)) for role in ("last", "middle")]
    x = torch.rand(2, 1, size, size)
    with torch.no_grad():
        logits = model(x)
    for h in hooks:
        h.remove()
    assert logits.shape == (2, 14)
    for role in ("last", "middle"):
        maps = to_maps(model, seen[role], (size, size))
        assert maps.ndim == 4 and maps.shape[0] == 2 and min(maps.shape[-2:]) >= 1  # B×C×h×w, whatever the layout


@pytest.mark.registry("model", "arch", extra=TIMM_ARCHS)
def test_grad_cam_reaches_both_layers(arch, built):
    """The gradient of a logit reaches the spatial positions of the declared layers' maps (a ViT's final block
    output would give zeros everywhere but the class token, which is why its ``last`` is that block's input), and
    Grad-CAM gives finite maps in [0, 1] at input resolution."""
    model, size = built(arch)
    x = torch.rand(3, 1, size, size, generator=torch.Generator().manual_seed(1))
    for role in ("last", "middle"):
        out = {}
        handle = resolve_layer(model, role).register_forward_hook(lambda _m, _i, o, out=out: out.__setitem__("o", o))
        try:
            logits = model(x.requires_grad_(True))
        finally:
            handle.remove()
        (grad,) = torch.autograd.grad(logits[:, 0].sum(), out["o"])
        per_position = to_maps(model, grad, (size, size)).abs().sum((0, 1))
        assert per_position.numel() >= 4 and int((per_position > 0).sum()) > 1  # not one position alone
        maps = grad_cam(model, x.detach(), "Atelectasis", layer=role)
        assert maps.shape == (3, size, size) and torch.isfinite(maps).all()
        assert maps.min() >= 0 and maps.max() <= 1


@pytest.mark.registry("model", "arch", extra=TIMM_ARCHS)
def test_feature_vector_is_the_classifier_input(arch, built):
    model, size = built(arch)
    x = torch.rand(2, 1, size, size)
    with torch.no_grad():
        f = feature_vector(model, x)
        head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        assert f.shape == (2, head.in_features)
        torch.testing.assert_close(head(f), model(x), atol=1e-4, rtol=1e-4)


@pytest.mark.registry("model", "arch", extra=TIMM_ARCHS)
def test_pruning_masks_the_declared_channel_axis(arch, built):
    """Masking every channel of the ``prune`` layer along :func:`channel_axis` keeps the shape and changes the
    logits; masking none changes nothing."""
    model, size = built(arch)
    layer = resolve_layer(model, "prune")
    x = torch.rand(2, 1, size, size)
    out = {}
    handle = layer.register_forward_hook(lambda _m, _i, o: out.__setitem__("o", o))
    with torch.no_grad():
        base = model(x)
    handle.remove()
    axis = channel_axis(model, out["o"])
    channels = out["o"].shape[axis]
    for fill, same in ((1.0, True), (0.0, False)):
        mask = ChannelMask(torch.full((channels,), fill), axis)
        handle = layer.register_forward_hook(lambda _m, _i, o, mask=mask: mask(o))
        with torch.no_grad():
            masked = model(x)
        handle.remove()
        assert torch.allclose(masked, base, atol=1e-5) == same


@pytest.mark.registry("model", "arch", extra=TIMM_ARCHS)
def test_normalisation_layers_are_found(arch, built):
    model, _ = built(arch)
    info = model_info(model)
    if info.norm == "none":
        with pytest.raises(UserError):
            norm_layers(model, "anp")
        return
    layers = norm_layers(model, "anp")
    assert layers and all(m.weight is not None and m.bias is not None for _, m in layers)


@pytest.mark.registry("model", "arch", extra=TIMM_ARCHS)
def test_size_rule_and_checkpoint_round_trip(arch, built, tmp_path):
    model, size = built(arch)
    info = model_info(model)
    if not arch.startswith("timm:"):
        assert arch_info(arch) == MODELS.get(arch).info or hasattr(MODELS.get(arch), "describe")
        too_small = info.min_size - 1 if info.min_size > 1 else None
        if too_small:
            with pytest.raises(UserError, match="at least"):
                load_config("quick", [f"model.arch={arch}", f"image_size={too_small}"])
        if info.size_multiple > 1:
            with pytest.raises(UserError, match="multiple"):
                load_config("quick", [f"model.arch={arch}", f"image_size={info.size_multiple * 4 + 1}"])
    path = tmp_path / "state.pt"
    torch.save(model.state_dict(), path)
    again = create_model(arch, pretrained=str(path), image_size=size).eval()
    x = torch.rand(1, 1, size, size)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))


def test_vit_patch_size_option_changes_the_grid_and_the_size_rule():
    config = load_config("quick", ["model.arch=vit_b_16", "model.options.patch_size=8", "image_size=32"])
    assert config.model.options == {"patch_size": 8}
    model = create_model("vit_b_16", image_size=32, options={"patch_size": 8})
    assert model_info(model).size_multiple == 8
    out = {}
    handle = resolve_layer(model, "last").register_forward_hook(lambda _m, _i, o: out.__setitem__("o", o))
    with torch.no_grad():
        model(torch.rand(1, 1, 32, 32))
    handle.remove()
    assert to_maps(model, out["o"], (32, 32)).shape[-2:] == (4, 4)
    with pytest.raises(UserError, match="multiple of 8"):
        load_config("quick", ["model.arch=vit_b_16", "model.options.patch_size=8", "image_size=36"])


def test_unknown_model_option_is_one_line():
    with pytest.raises(UserError, match="no option 'depth'") as err:
        load_config("quick", ["model.arch=resnet50", "model.options.depth=3"])
    assert "\n" not in str(err.value)


def test_undeclared_roles_get_one_line_and_module_names_pass_through():
    plain = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
    assert model_info(plain) is None and layer_name(plain, "1") == "1"
    with pytest.raises(UserError, match="declares no 'last' layer") as err:
        resolve_layer(plain, "last")
    assert "\n" not in str(err.value)


def test_info_is_read_through_wrappers_and_checks_its_fields():
    model = create_model("densenet121")

    class Wrapper(nn.Module):  # DistributedDataParallel and torch.compile keep the model as an attribute
        def __init__(self, inner):
            super().__init__()
            self.module = inner

    assert model_info(Wrapper(model)) is model_info(model)
    with pytest.raises(ValueError, match="unknown layer role"):
        ModelInfo(layers={"penultimate": "relu"})
    with pytest.raises(ValueError, match="unknown layout"):
        ModelInfo(layout="nlc")


def test_unknown_arch_is_one_line():
    with pytest.raises(UserError, match="unknown model") as err:
        load_config("quick", ["model.arch=resnet9000"])
    assert "\n" not in str(err.value)


def test_timm_without_timm_or_with_an_unknown_name_is_one_line(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_timm(name, *args, **kwargs):
        if name == "timm" or name.startswith("timm."):
            raise ImportError("No module named 'timm'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_timm)
    with pytest.raises(UserError, match=r"medbackdoor\[timm\]") as err:
        load_config("quick", ["model.arch=timm:resnet18"])
    assert "\n" not in str(err.value)
    monkeypatch.setattr(builtins, "__import__", real_import)
    if HAVE_TIMM:
        with pytest.raises(UserError, match="timm has no model"):
            load_config("quick", ["model.arch=timm:no_such_net"])


@pytest.mark.registry("model", "arch", extra=TIMM_ARCHS)
def test_second_derivatives_flow_under_second_order(arch, built):
    """I-BAU's implicit hypergradient differentiates a gradient: every model must allow it inside
    :func:`~medbackdoor.defenses._holdout.second_order` (attention's fused kernels have no double backward)."""
    from medbackdoor.defenses._holdout import second_order

    model, size = built(arch)
    delta = torch.zeros(1, 1, size, size, requires_grad=True)
    x = torch.rand(2, 1, size, size)
    with second_order():
        (g,) = torch.autograd.grad(model(x + delta).sum(), delta, create_graph=True)
        (gg,) = torch.autograd.grad(g.pow(2).sum(), delta)
    assert torch.isfinite(gg).all()


@pytest.mark.parametrize("patch", ["0", "-4", "sixteen", "true"])
def test_a_bad_vit_patch_size_is_one_line(patch):
    with pytest.raises(UserError, match="patch_size") as err:
        load_config("quick", ["model.arch=vit_b_16", f"model.options.patch_size={patch}"])
    assert "\n" not in str(err.value)
