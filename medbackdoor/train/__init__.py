"""Training and per-epoch evaluation of one backdoor run.

``run`` is imported on first use, so commands that only read data (``medbackdoor data ...``) do not load torch.
"""

__all__ = ["run"]


def __getattr__(name: str):
    if name == "run":
        from medbackdoor.train.runner import run

        return run
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
