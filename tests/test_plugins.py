"""A user's own defense, trigger, dataset or model: ``module:Name``, ``path/to/file.py:Name`` and entry points,
checked and recorded like a built-in."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import module_run

from medbackdoor._registry import Registry, is_plugin_spec, plugin_spec
from medbackdoor.cli.main import main
from medbackdoor.config import load_config
from medbackdoor.errors import UserError
from medbackdoor.train import run

TINY = ["dataset.options.n_images=96", "dataset.options.source_size=32", "image_size=32", "train.epochs=1",
        "train.batch_size=16", "eval.epsilons=[0.1]", "trigger.mode=append"]

DEFENSE = textwrap.dedent('''
    import numpy as np

    from medbackdoor.defenses import DataDefense, Detection


    class Brightest(DataDefense):
        """Flags the share ``share`` of training images with the highest mean pixel."""

        paper = "a test plugin"
        changes = "none"

        def __init__(self, share: float = 0.1) -> None:
            self.share = share

        def suspicion(self, d):
            means = np.asarray(d.train_images[0:len(d.train_images)], np.float64).mean((1, 2))
            cut = np.quantile(means, 1 - self.share)
            return Detection(means, means > cut)


    class NotADefense:
        pass


    class Broken(DataDefense):
        paper = changes = "none"

        def suspicion(self, d):
            raise ValueError("the plugin's own bug")
''')

TRIGGER = textwrap.dedent('''
    import numpy as np

    from medbackdoor.triggers import Trigger


    class Corner(Trigger):
        """A white ``size``×``size`` square in the top-left corner."""

        def __init__(self, size: int = 2) -> None:
            self.size = size

        def pattern(self, height, width, rng):
            m = np.zeros((height, width), np.float32)
            m[: self.size, : self.size] = 1
            return m, np.ones((height, width), np.float32)
''')


@pytest.fixture
def plugin_dir(tmp_path) -> Path:
    folder = tmp_path / "userland"
    folder.mkdir()
    (folder / "my_defense.py").write_text(DEFENSE)
    (folder / "my_trigger.py").write_text(TRIGGER)
    return folder


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    yield from module_run(tmp_path_factory, "plugins", TINY)


def test_plugin_specs_are_told_apart_from_names():
    assert is_plugin_spec("pkg.mod:Name") and is_plugin_spec("a/b.py:Name") and is_plugin_spec("mod:Name")
    for name in ("square", "label-audit", "mod:", ":Name", "mod:Na-me"):
        assert not is_plugin_spec(name), name
    assert plugin_spec("rel/file.py:X") == f"{Path('rel/file.py').resolve()}:X"
    assert plugin_spec("pkg.mod:X") == "pkg.mod:X" and plugin_spec("square") == "square"


def test_a_registry_loads_a_file_plugin_once_and_checks_its_kind(plugin_dir):
    from medbackdoor.defenses import DEFENSES

    spec = f"{plugin_dir / 'my_defense.py'}:Brightest"
    cls = DEFENSES.get(spec)
    assert cls is DEFENSES.get(spec) and cls.kind == "data"
    assert DEFENSES.create_checked(spec, {"share": 0.2}).share == 0.2
    origin = DEFENSES.origin(spec)
    assert origin["file"] == str(plugin_dir / "my_defense.py") and len(origin["sha256"]) == 16
    assert spec in DEFENSES and "nope.py:X" not in DEFENSES
    with pytest.raises(UserError, match="has no option 'colour'"):
        DEFENSES.check_options(spec, {"colour": 1})
    with pytest.raises(UserError, match="is not a defense: it must be a subclass of medbackdoor.defenses.base.Defense"):
        DEFENSES.get(f"{plugin_dir / 'my_defense.py'}:NotADefense")
    with pytest.raises(UserError, match="has no 'Missing'"):
        DEFENSES.get(f"{plugin_dir / 'my_defense.py'}:Missing")
    with pytest.raises(UserError, match="does not exist"):
        DEFENSES.get(f"{plugin_dir / 'nope.py'}:Brightest")
    (plugin_dir / "bad.py").write_text("import no_such_module_here\n")
    with pytest.raises(UserError, match="cannot load plugin file .*ModuleNotFoundError: No module named"):
        DEFENSES.get(f"{plugin_dir / 'bad.py'}:X")
    with pytest.raises(UserError, match="cannot import plugin module 'no_such_pkg.mod'"):
        DEFENSES.get("no_such_pkg.mod:X")


def test_entry_points_add_components_by_name(tmp_path, monkeypatch):
    """An installed distribution's entry point (group ``medbackdoor.<kind>s``) is found by its name."""
    site = tmp_path / "site"
    (site / "userpkg").mkdir(parents=True)
    (site / "userpkg" / "__init__.py").write_text(TRIGGER)
    info = site / "userpkg-1.2.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: userpkg\nVersion: 1.2\n")
    (info / "entry_points.txt").write_text("[medbackdoor.triggers]\ncorner = userpkg:Corner\n")
    monkeypatch.syspath_prepend(str(site))
    from medbackdoor.triggers import TRIGGERS

    assert "corner" in TRIGGERS.names() and "corner" not in TRIGGERS.builtin_names()
    trigger = TRIGGERS.create_checked("corner", {"size": 3})
    out = trigger(np.zeros((8, 8), np.uint8), np.random.default_rng(0))
    assert (out[:3, :3] == 255).all() and out[3:].sum() == 0 and out[:, 3:].sum() == 0
    origin = TRIGGERS.origin("corner")
    assert origin["distribution"] == "userpkg" and origin["version"] == "1.2"
    own = Registry("thing", group="medbackdoor.things")
    with pytest.raises(UserError, match="unknown thing 'corner'"):
        own.get("corner")


def test_defend_with_a_file_plugin_scores_and_records_it(tiny_run, plugin_dir, capsys, monkeypatch):
    monkeypatch.setenv("MEDBACKDOOR_CACHE", str(tiny_run.parent / "cache"))
    monkeypatch.chdir(plugin_dir)  # a relative path, as a user types it
    assert main(["defend", str(tiny_run), "--method", "my_defense.py:Brightest", "--set", "share=0.2",
                 "--holdout", "16"]) == 0
    assert "detection AUROC" in capsys.readouterr().out
    summary = json.loads((tiny_run / "defenses" / "Brightest" / "summary.json").read_text())
    assert summary["method"] == "my_defense.py:Brightest" and summary["options"] == {"share": 0.2}
    assert summary["origin"]["file"] == str(plugin_dir / "my_defense.py") and summary["kind"] == "data"
    n = json.loads((tiny_run / "manifest.json").read_text())["dataset"]["train_samples"]
    assert summary["detection"]["flagged"] + summary["cross_samples"]["flagged"] == len(summary["flagged_positions"])
    assert 0 < len(summary["flagged_positions"]) <= 0.2 * n + 1


@pytest.mark.parametrize("method, message", [
    ("my_defense.py:NotADefense", "is not a defense"),
    ("my_defense.py:Missing", "has no 'Missing'"),
    ("nope.py:Brightest", "does not exist"),
])
def test_a_bad_plugin_is_one_line(tiny_run, plugin_dir, method, message, capsys, monkeypatch):
    monkeypatch.setenv("MEDBACKDOOR_CACHE", str(tiny_run.parent / "cache"))
    monkeypatch.chdir(plugin_dir)
    assert main(["defend", str(tiny_run), "--method", method]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_a_plugin_that_fails_in_its_hook_shows_its_traceback_and_exits_1(tiny_run, plugin_dir, capsys, monkeypatch):
    monkeypatch.setenv("MEDBACKDOOR_CACHE", str(tiny_run.parent / "cache"))
    assert main(["defend", str(tiny_run), "--method", f"{plugin_dir / 'my_defense.py'}:Broken", "--holdout", "16"]) == 1
    err = capsys.readouterr().err
    assert "ValueError: the plugin's own bug" in err and "Traceback" in err
    assert err.strip().splitlines()[-1].startswith("medbackdoor: defense")


def test_a_module_plugin_is_imported_in_the_defense_process(tiny_run, plugin_dir, monkeypatch):
    """``package.module:Name``: importable where the user runs (here through ``PYTHONPATH``), so in the defense
    process too."""
    from medbackdoor.defenses.runner import defend

    monkeypatch.setenv("MEDBACKDOOR_CACHE", str(tiny_run.parent / "cache"))
    monkeypatch.setenv("PYTHONPATH", str(plugin_dir))
    monkeypatch.syspath_prepend(str(plugin_dir))
    summary = defend(tiny_run, "my_defense:Brightest", holdout=16, name="brightest-module")
    assert summary.origin["module"] == "my_defense" and summary.detection["n"] > 0


def test_a_run_with_a_plugin_trigger_names_it_in_its_manifest(tmp_path, plugin_dir, monkeypatch):
    monkeypatch.setenv("MEDBACKDOOR_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(plugin_dir)
    config = load_config(overrides=[*TINY, "trigger.kind=my_trigger.py:Corner", "trigger.options.size=3"])
    assert config.trigger.kind == f"{plugin_dir / 'my_trigger.py'}:Corner"  # recorded with its absolute path
    run(config, tmp_path / "run", progress=False)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["plugins"]["trigger"]["file"] == str(plugin_dir / "my_trigger.py")
    assert "dataset" not in manifest["plugins"] and manifest["trigger"] == "Corner(size=3)"
    record = np.load(tmp_path / "run" / "attack.npz")
    assert record["trigger_mask"][:3, :3].all() and record["trigger_mask"].sum() == 9
    from medbackdoor.experiment import build_trigger

    with pytest.raises(UserError, match="is not a trigger: it must be a subclass of medbackdoor.triggers.base.Trigger"):
        build_trigger(load_config(overrides=[*TINY, "trigger.kind=my_defense.py:Brightest"]), ("Atelectasis",))


def test_a_dataset_and_a_model_plugin_train_a_run(tmp_path, monkeypatch):
    """A dataset subclass that declares its own labels and a model factory, both from the user's file."""
    monkeypatch.setenv("MEDBACKDOOR_CACHE", str(tmp_path / "cache"))
    user = tmp_path / "user.py"
    user.write_text(textwrap.dedent('''
        import numpy as np
        from torch import nn

        from medbackdoor.data import ChestXrayDataset


        class Dots(ChestXrayDataset):
            """Three findings: a bright dot in one of three places."""

            name = "dots"
            label_names = ("left", "middle", "right")
            has_patient_ids = False

            def __init__(self, root=None, n=60, seed=0, limit=None, val_fraction=0.2):
                rng = np.random.default_rng(seed)
                labels = (rng.random((n, 3)) < 0.4).astype(np.float32)
                splits = np.where(np.arange(n) % 5 == 0, "test", np.where(np.arange(n) % 5 == 1, "val", "train"))
                self._labels = labels
                self._set_table([f"dot{i}" for i in range(n)], labels, [str(i) for i in range(n)], splits, limit,
                                seed)

            def source_fingerprint(self):
                return {"dots": len(self.names)}

            def read_source(self, index):
                image = np.full((32, 32), 60, np.uint8)
                for c in np.flatnonzero(self.labels[index] > 0):
                    image[14:18, 4 + 10 * c : 8 + 10 * c] = 200
                return image


        def small_net(num_classes=3, imagenet=False, image_size=None, width=8):
            return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                 nn.Flatten(), nn.Linear(width, num_classes))
    '''))
    config = load_config(overrides=["dataset.name=" + f"{user}:Dots", "model.arch=" + f"{user}:small_net",
                                    "model.options.width=4", "image_size=32", "train.epochs=1", "train.batch_size=8",
                                    "trigger.target=middle", "eval.epsilons=[0.1]"])
    run(config, tmp_path / "run", progress=False)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["labels"] == ["left", "middle", "right"] and manifest["target"] == "middle"
    assert set(manifest["plugins"]) == {"dataset", "model"}
    with pytest.raises(UserError, match="has no option 'depth'"):
        load_config(overrides=["model.arch=" + f"{user}:small_net", "model.options.depth=2"])
