"""The ``medbackdoor`` command line: it parses arguments and calls the library, nothing more."""

from medbackdoor.cli.main import main

__all__ = ["main"]
