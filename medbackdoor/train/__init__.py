"""Training and per-epoch evaluation of one backdoor run."""

from medbackdoor.train.runner import run

__all__ = ["run"]
