"""One KEY=VALUE parser: ``run --set``, ``defend --set`` and ``--data-option`` read a value the same way (YAML) and
refuse the same bad input with the same one line (exit 2)."""

from __future__ import annotations

import pytest
import yaml

from medbackdoor.cli.main import main
from medbackdoor.config import load_config
from medbackdoor.defenses.runner import parse_options
from medbackdoor.errors import UserError


def _error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    return lines[0]


@pytest.mark.parametrize("argv, flag", [
    (["run", "--out", "{tmp}/r", "--set", "image_size"], "--set"),
    (["defend", "{tmp}", "--method", "label-audit", "--set", "reference"], "--set"),
    (["data", "check", "--data-option", "n_images"], "--data-option"),
])
def test_a_pair_without_a_value_is_the_same_line_everywhere(argv, flag, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert _error(capsys, argv).endswith(f"{flag} expects KEY=VALUE, got {argv[-1]!r}")


@pytest.mark.parametrize("text", ["[1, 2", "{a: 1", "*alias"])
def test_a_value_yaml_cannot_read_is_refused_by_config_and_defense_options_alike(text):
    with pytest.raises(yaml.YAMLError):
        yaml.safe_load(text)
    with pytest.raises(UserError, match="cannot read") as config_error:
        load_config(overrides=[f"dataset.root={text}"])  # on main: silently the string itself
    with pytest.raises(UserError, match="cannot read") as option_error:
        parse_options([f"dataset.root={text}"])
    assert str(config_error.value) == str(option_error.value)


@pytest.mark.parametrize("text", ["0.5", "[0.5, 0.9]", "true", "null", "'007'", "a=b", "{x: 1}"])
def test_values_are_read_as_yaml_in_both(text):
    expected = yaml.safe_load(text)
    assert parse_options([f"k={text}"]) == {"k": expected}
    config = load_config(overrides=[f"dataset.options.k={text}"])
    assert config.dataset.options["k"] == expected


@pytest.mark.parametrize("overrides, section, expected", [
    (["dataset.name=chestmnist", "dataset.options.size=64"], "dataset", {"size": 64}),
    (["dataset.options.size=64", "dataset.name=chestmnist"], "dataset", {"size": 64}),  # order does not matter
    (["dataset.name=chexpert"], "dataset", {}),
    (["dataset.name=synthetic", "dataset.options.n_images=50"], "dataset",  # the same name keeps the options
     {"n_images": 50, "source_size": 128, "lesion_contrast": 0.8}),
])
def test_options_follow_the_component_they_were_given_for(overrides, section, expected):
    assert getattr(load_config("quick", overrides), section).options == expected


def test_trigger_and_model_options_follow_their_component(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"trigger": {"kind": "blend", "options": {"alpha": 0.2}},
                                    "model": {"arch": "vit_b_16", "options": {"patch_size": 8}}}))
    kept = load_config(path)
    assert kept.trigger.options == {"alpha": 0.2} and kept.model.options == {"patch_size": 8}
    changed = load_config(path, ["trigger.kind=sig", "model.arch=densenet121"])
    assert changed.trigger.options == {} and changed.model.options == {}
