"""A defense runs in a process that holds no truth: the parent's side of it.

The parent (``defend``, a sweep's defense step) writes the defender's materials into a fresh folder outside the
run folder (:func:`write_materials`):

* ``model.pt`` (the weights, a plain state dict) and the model's recipe (architecture, options, input size);
* ``train_images.npy`` / ``train_labels.npy``: the training set as trained, in an order drawn from a seed the
  defense never sees (so appended poisoned copies are not a block at the end);
* ``holdout_images.npy`` / ``holdout_labels.npy``: the clean holdout;
* ``test_images.npy`` (input defenses and mitigations): the clean and the triggered test inputs as plain pixels,
  in one random order that mixes them (for a clean-model baseline, those of several runs);
* ``request.json``: which defenses to run (method, options), the device, the batch size, the defense's seed, the
  label names, the dataset's name and, for a defense that trains, the training recipe.

The defenses then run in a process started as ``python -m medbackdoor.defenses.child`` (:class:`DefenseProcess`,
:mod:`medbackdoor.defenses.child`): no argument, an empty folder of its own, an environment reduced to what Python
and torch need (no variable names the run folder; ``PWD`` and the like are dropped). It imports torch and the
defenses once and forks a fresh process per request, which works in the materials' folder and answers into
``answers/NAME/``; the parent maps the answers back (the training order, the test mix) and scores them against
the truth (:mod:`~.runner`). The order
and mix seeds are spawned from the checkpoint's digest and ``defender_seed``, independent of the attack seed;
the seed a defense gets is another child of the same root, from which the order cannot be computed.

A plugin defense (a ``module:Name`` or ``file.py:Name`` spec, or an installed entry point) is never imported by
the parent: :func:`describe` asks a child what it is (its kind, options, revision) before anything is run.
"""

from __future__ import annotations

import atexit
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from medbackdoor._io import plain
from medbackdoor.errors import UserError

# The environment a child keeps (everything else is dropped): the interpreter, locale, threads and devices.
CHILD_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
             "CUDA_VISIBLE_DEVICES", "CUBLAS_WORKSPACE_CONFIG", "NVIDIA_VISIBLE_DEVICES", "SYSTEMROOT")
CHUNK = 256  # images copied at a time
TRAIN_ORDER, TEST_MIX, DEFENSE_SEED = 1, 2, 3  # streams spawned from the defender root seed


@dataclass
class Described:
    """What a defense is, as the parent needs to know it before running it."""

    method: str
    kind: str
    revision: int
    options: dict  # resolved: the defaults of the code that runs now filled in
    paper: str = ""
    changes: str = ""
    trains: bool = False
    origin: dict = field(default_factory=dict)


def describe(method: str, options: dict) -> Described:
    """The defense ``method`` with user ``options``: a built-in is built here, a plugin in a child process that
    holds nothing of a run. A bad method or option is one line (:class:`UserError`)."""
    return describe_all([(method, options)])[0]


def describe_all(requests: list[tuple[str, dict]]) -> list[Described]:
    """:func:`describe` for several requests; the plugins among them in one child."""
    from medbackdoor.defenses import DEFENSES

    out: list[Described | None] = [None] * len(requests)
    plugins = []
    for i, (method, options) in enumerate(requests):
        if DEFENSES.is_builtin(method):
            out[i] = describe_here(method, options)
        else:
            plugins.append(i)
    if plugins:
        with tempfile.TemporaryDirectory(prefix="medbackdoor-describe-") as folder:
            answers = run_child(Path(folder), {"mode": "describe", "defenses": [
                {"method": _portable(requests[i][0]), "options": requests[i][1]} for i in plugins]})
            for i, answer in zip(plugins, answers["describe"]):
                if "error" in answer:
                    raise UserError(answer["error"])
                out[i] = Described(**answer)
    return out


def describe_here(method: str, options: dict) -> Described:
    """:func:`describe` in this process (the child's side, and built-ins)."""
    from medbackdoor.defenses import DEFENSES

    defense = DEFENSES.create_checked(method, dict(options), what=f"defense {method}")
    return Described(method=method, kind=defense.kind, revision=int(defense.revision),
                     options=json.loads(json.dumps(defense.options(), default=str)), paper=defense.paper,
                     changes=defense.changes, trains=bool(getattr(defense, "trains", False)),
                     origin=DEFENSES.origin(method))


def _portable(method: str) -> str:
    """A ``file.py:Name`` spec with its file made absolute (the child works in another folder)."""
    from medbackdoor._registry import plugin_spec

    return plugin_spec(method)


# --- the child process ----------------------------------------------------------------------------------------------

def child_env() -> dict[str, str]:
    """The defense process's environment: :data:`CHILD_ENV` only, plus ``PYTHONPATH`` made absolute where this
    process was given one (a project run from its working tree). The thread count goes with each request."""
    env = {k: os.environ[k] for k in CHILD_ENV if k in os.environ}
    paths = [str(Path(p).resolve()) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


class DefenseProcess:
    """The defense process of this process (:mod:`medbackdoor.defenses.child`), started on first use and kept:
    it imports torch and the defenses once and forks a fresh process per request, so a request pays no start-up
    beyond the fork. Started again when it died or when the environment it would get changed (a new
    ``PYTHONPATH``). It never sees this process's memory: it is a new interpreter, not a fork of this one."""

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None
        self.env: dict | None = None
        self.home: Path | None = None

    def start(self) -> None:
        """Start the process unless it runs with the environment it would get now (its imports then overlap
        whatever this process does next)."""
        env = child_env()
        if self.process is not None and self.process.poll() is None and env == self.env:
            return
        self.stop()
        self.home = Path(tempfile.mkdtemp(prefix="medbackdoor-defense-process-"))
        self.env = env
        self.process = subprocess.Popen([sys.executable, "-m", "medbackdoor.defenses.child"], cwd=self.home,
                                        env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, bufsize=1)

    def stop(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.stdin.close()
                try:
                    self.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            self.process.stdout.close()
            self.process = None
        if self.home is not None:
            shutil.rmtree(self.home, ignore_errors=True)
            self.home = None

    def serve(self, folder: Path, request: dict) -> dict:
        """Run ``request`` on the materials in ``folder``; returns ``answers/index.json``.

        Raises:
            RuntimeError: the request's process (or the defense process) died; the last lines of its output say
                why.
        """
        import torch

        self.start()
        token = secrets.token_hex(12)
        message = {"folder": str(folder), "token": token, "threads": torch.get_num_threads(), "request": request}
        output: list[str] = []
        try:
            self.process.stdin.write(json.dumps(message, default=plain) + "\n")
            self.process.stdin.flush()
            for line in self.process.stdout:
                if line.startswith(token):
                    code = int(line.split()[1])
                    break
                output = (output + [line.rstrip()])[-40:]
            else:
                raise BrokenPipeError
        except (BrokenPipeError, OSError):
            self.stop()
            raise RuntimeError("the defense process died:\n" + "\n".join(output[-15:])) from None
        index = folder / "answers" / "index.json"
        if code != 0 or not index.is_file():
            raise RuntimeError(f"the defense process exited with code {code}:\n" + "\n".join(output[-15:]))
        return json.loads(index.read_text())


PROCESS = DefenseProcess()  # this process's defense process (holds a pipe, no run)
atexit.register(PROCESS.stop)


def run_child(folder: Path, request: dict) -> dict:
    """Run ``request`` in the defense process on the materials in ``folder``; its ``answers/index.json``."""
    return PROCESS.serve(folder, request)


# --- the materials --------------------------------------------------------------------------------------------------

@dataclass
class Materials:
    """The defender's materials in ``folder`` and what the parent alone keeps to read the answers back.

    ``train_order[i]`` is the position (as trained) of the training sample written at ``i``; ``test_mix[i]`` the
    index into the test parts, one after another (a run's clean test inputs, then its triggered ones), of the test
    input written at ``i``; ``n_test`` the size of the first part, ``part_sizes`` the size of each.
    """

    folder: Path
    train_order: np.ndarray
    test_mix: np.ndarray | None
    n_test: int
    n_holdout: int
    seconds: float
    seed: int  # the defense's own seed (the child's)
    part_sizes: tuple[int, ...] = ()

    def train_positions(self, materials_positions) -> np.ndarray:
        """Positions as trained of positions in the materials' training order."""
        return self.train_order[np.asarray(materials_positions, np.int64)]

    def as_trained(self, values: np.ndarray) -> np.ndarray:
        """Per-sample values in the materials' order, put back in the order as trained."""
        values = np.asarray(values)
        out = np.empty_like(values)
        out[self.train_order] = values
        return out

    def unmix(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-test-input values in the mixed order → (values of the first part, the clean inputs; of the rest,
        the triggered ones)."""
        values = np.asarray(values)
        out = np.empty_like(values)
        out[self.test_mix] = values
        return out[: self.n_test], out[self.n_test :]

    def parts(self, values: np.ndarray) -> list[np.ndarray]:
        """Per-test-input values in the mixed order → the values of each test part, in the part's own order."""
        values = np.asarray(values)
        out = np.empty_like(values)
        out[self.test_mix] = values
        bounds = np.cumsum([0, *self.part_sizes])
        return [out[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])]


def defender_seeds(root: int, digest: str) -> dict[int, int]:
    """The defender's seeds (training order, test mix, the defense's own) from the user's ``root`` (the
    ``--defender-seed``) and the checkpoint's digest: spawned streams of one seed sequence, so the defense's seed
    tells nothing of the other two, and none depends on the attack seed."""
    children = np.random.SeedSequence([int(root), int(digest, 16) & ((1 << 63) - 1)]).spawn(3)
    return {stream: int(child.generate_state(1, np.uint32)[0] >> np.uint32(1))
            for stream, child in zip((TRAIN_ORDER, TEST_MIX, DEFENSE_SEED), children)}


def write_materials(folder: Path, model_state: dict, model_recipe: dict, train_images, train_labels,
                    holdout_images, holdout_labels, test_clean=None, test_triggered=None,
                    seeds: dict[int, int] | None = None, test_parts: list | None = None) -> Materials:
    """Write the defender's materials into ``folder`` (see the module docstring); returns what reads them back.

    Args:
        model_state: the model's weights (a state dict of tensors).
        model_recipe: how to build the model for them (``arch``, ``options``, ``image_size``, ``num_classes``,
            ``channels_last``, ``pretrained``).
        train_images: the training set as trained (sliceable K×H×W or K×C×H×W uint8, e.g. a lazy view).
        train_labels: N×C labels as trained.
        holdout_images: the clean holdout (sliceable).
        holdout_labels: its labels.
        test_clean: clean test inputs (sliceable), or None when no defense needs them.
        test_triggered: the triggered test inputs, or None (none; or the same as the clean ones, a label-only
            trigger: then only the clean ones are written).
        seeds: :func:`defender_seeds`.
        test_parts: instead of ``test_clean`` and ``test_triggered``, the test inputs as a list of parts (sliceable),
            written in one mixed order (:meth:`Materials.parts` reads the answers back per part).
    """
    import torch

    t0 = time.perf_counter()
    seeds = seeds or defender_seeds(0, "0")
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model_state, folder / "model.pt")
    (folder / "model.json").write_text(json.dumps(model_recipe, default=plain))
    n = len(train_images)
    order = np.random.default_rng(seeds[TRAIN_ORDER]).permutation(n)
    _copy(folder / "train_images.npy", [train_images], order)
    np.save(folder / "train_labels.npy", np.asarray(train_labels, np.float32)[order])
    _copy(folder / "holdout_images.npy", [holdout_images], np.arange(len(holdout_images)))
    np.save(folder / "holdout_labels.npy", np.asarray(holdout_labels, np.float32))
    if test_parts is None and test_clean is not None:
        test_parts = [test_clean] if test_triggered is None or test_triggered is test_clean else [test_clean,
                                                                                                 test_triggered]
    mix, sizes = None, ()
    if test_parts:
        sizes = tuple(len(p) for p in test_parts)
        mix = np.random.default_rng(seeds[TEST_MIX]).permutation(sum(sizes))
        _copy(folder / "test_images.npy", test_parts, mix)
    return Materials(folder, order, mix, sizes[0] if sizes else 0, len(holdout_images), time.perf_counter() - t0,
                     seeds[DEFENSE_SEED], sizes)


def _copy(path: Path, parts: list, order: np.ndarray) -> None:
    """Write ``concat(parts)[order]`` as one ``.npy`` (a chunk at a time: memory stays flat). Each part is read in
    its own order and scattered to its new places."""
    first = np.asarray(parts[0][0 : min(CHUNK, len(parts[0]))])
    if first.dtype != np.uint8 or first.ndim not in (3, 4):
        raise TypeError(f"expected K×H×W or K×C×H×W uint8 images, got {first.dtype} {first.shape}")
    total = int(sum(len(p) for p in parts))
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(total, *first.shape[1:]))
    where = np.empty(total, np.int64)
    where[order] = np.arange(total)  # source index -> position written
    start = 0
    for part in parts:
        for lo in range(0, len(part), CHUNK):
            block = np.asarray(part[lo : lo + CHUNK])
            out[where[start + lo : start + lo + len(block)]] = block
        start += len(part)
    out.flush()
    del out


WORKDIR_ENV = "MEDBACKDOOR_DEFENDER_DIR"


def make_folder() -> Path:
    """A fresh, private folder for a child's materials, in ``$MEDBACKDOOR_DEFENDER_DIR`` when set (e.g. a large
    disk when the system's temporary folder is small or in memory), else in the system's temporary folder. Keep
    it outside any folder that holds runs."""
    base = Path(os.environ.get(WORKDIR_ENV) or tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="medbackdoor-defender-", dir=base))


def remove_folder(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def described_dict(d: Described) -> dict:
    return asdict(d)
