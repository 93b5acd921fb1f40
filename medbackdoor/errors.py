"""Errors a user can fix: the CLI prints their message on one line and exits with code 2."""


class UserError(Exception):
    """Bad input (a missing file, an unknown name, a value out of range): reported without a traceback."""
