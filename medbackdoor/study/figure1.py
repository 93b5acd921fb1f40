"""Which runs of a study make the paper's Figure 1 (Grad-CAM of the 3×3 trigger model and its clean control), and
explaining them.

A sweep with a ``figure1`` pair (trained at a resolution where the last layer's map is at least 4×4) is explained
there. Otherwise the pair is found by what the runs are, not by their folder names: the paper's trigger model is
the poisoned run with the 3×3 black centre square at the lowest seed, and its control the clean run of the same
setting (:func:`medbackdoor.study.controls.match_controls`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from medbackdoor._values import flatten
from medbackdoor.report.aggregate import condition_of
from medbackdoor.rundir import RunDir, SweepDir

PAPER_TRIGGER = {"trigger.kind": "square", "trigger.size": 3, "trigger.location": "center", "trigger.value": 0.0}
DONE = ("complete", "skipped (complete)")


def is_paper_trigger(folder: str | Path) -> bool:
    """True when the run poisons with the paper's Figure-1 trigger (a 3×3 black square at the centre), whether
    the config sets those keys or leaves them at the square's own defaults."""
    condition = condition_of(flatten(RunDir(folder).config().to_dict()))
    return bool(condition.get("trigger.fraction")) and all(condition.get(k) == v for k, v in PAPER_TRIGGER.items())


def figure1_runs(results: list[dict]) -> list[Path]:
    """The folders to explain for Figure 1 among a sweep's results (``name``, ``folder``, ``status`` each): the
    trigger model first, then its clean control; ``[]`` when the study has neither. A study whose runs differ in
    more than the attack (``model.arch``, ``train.lr``, ...: the architectures study) gets one such pair per setting
    of everything but the trigger, in the order of their first appearance among the sorted models."""
    from medbackdoor.study.controls import match_controls

    done = {r["name"]: Path(r["folder"]) for r in results if r.get("status") in DONE}
    pair = [done[n] for n in (SweepDir.figure_name("trigger"), SweepDir.figure_name("clean")) if n in done]
    if pair:
        return pair
    # the grid's runs: neither the figure pair nor a step on a run (``RUN:control``, ``RUN:DEFENSE``, ...)
    grid = [f for n, f in done.items() if not SweepDir.is_figure_run(n) and ":" not in n]
    models = sorted((RunDir(f).config().train.seed, f.name, f) for f in grid if is_paper_trigger(f))
    if not models:
        return []
    controls = dict(match_controls(grid))
    chosen: dict[str, Path] = {}
    for _, _, folder in models:  # the lowest seed of each setting
        chosen.setdefault(_setting(folder), folder)
    pairs = []
    for model in chosen.values():
        pairs += [model] + ([controls[model]] if model in controls else [])
    return pairs


def _setting(folder: Path) -> str:
    """The run's condition without its attack (every ``trigger.*`` key): what a Figure-1 pair shares."""
    condition = condition_of(flatten(RunDir(folder).config().to_dict()))
    return repr(sorted((k, repr(v)) for k, v in condition.items() if not k.startswith("trigger.")))


def explain_figure_runs(results: list[dict], report: Callable[[str], None] = print) -> list[Path]:
    """Grad-CAM (Figure 1 and the localisation numbers) of :func:`figure1_runs`, each unless already explained;
    returns the folders explained now."""
    from medbackdoor.explain.run_explain import explain_run
    from medbackdoor.run import Run

    explained = []
    for folder in figure1_runs(results):
        run = Run(folder)
        if not run.dir.localisation_path.exists():
            explain_run(run)
            explained.append(folder)
            report(f"explained {folder.name}: {run.dir.explain_figure_path}")
    return explained
