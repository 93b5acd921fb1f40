"""Every registered model declares what the toolkit needs (:class:`~medbackdoor.models.info.ModelInfo`); a model is
checked here by being registered, with no test edits."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medbackdoor.config import load_config
from medbackdoor.errors import UserError
from medbackdoor.explain.cam import resolve_layer
from medbackdoor.models import MODELS, create_model
from medbackdoor.models.info import LAYER_ROLES, ModelInfo, layer_name, model_info

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("arch", MODELS.names())
def test_registered_model_declares_its_layers_and_runs_at_its_minimum_size(arch):
    model = create_model(arch).eval()
    info = model_info(model)
    assert info is not None and {"last", "middle", "prune"} <= set(info.layers)
    modules = dict(model.named_modules())
    assert all(info.layers[role] in modules for role in LAYER_ROLES)
    seen = {}
    hooks = [resolve_layer(model, role).register_forward_hook(
        lambda _m, _i, out, role=role: seen.__setitem__(role, out)) for role in ("last", "middle")]
    with torch.no_grad():
        logits = model(torch.rand(2, 1, info.min_size, info.min_size))
    for h in hooks:
        h.remove()
    assert logits.shape == (2, 14)
    assert all(seen[r].ndim == 4 and seen[r].shape[0] == 2 for r in ("last", "middle"))  # B×C×H×W maps
    with pytest.raises(UserError, match="at least"):
        load_config("quick", [f"model.arch={arch}", f"image_size={info.min_size - 1}"])


def test_undeclared_roles_get_one_line_and_module_names_pass_through():
    plain = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
    assert model_info(plain) is None and layer_name(plain, "1") == "1"
    with pytest.raises(UserError, match="declares no 'last' layer") as err:
        resolve_layer(plain, "last")
    assert "\n" not in str(err.value)


def test_info_is_read_through_wrappers_and_checks_its_roles():
    model = create_model("densenet121")

    class Wrapper(nn.Module):  # DistributedDataParallel and torch.compile keep the model as an attribute
        def __init__(self, inner):
            super().__init__()
            self.module = inner

    assert model_info(Wrapper(model)) is model_info(model)
    with pytest.raises(ValueError, match="unknown layer role"):
        ModelInfo(layers={"penultimate": "relu"})


def test_unknown_arch_is_one_line():
    with pytest.raises(UserError, match="unknown model") as err:
        load_config("quick", ["model.arch=resnet9000"])
    assert "\n" not in str(err.value)
