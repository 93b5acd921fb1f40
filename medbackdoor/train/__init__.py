"""Training and per-epoch evaluation of one backdoor run."""

from medbackdoor.train.run import run

__all__ = ["run"]
