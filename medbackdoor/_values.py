"""Typed values and nested mappings: the checks config keys and component options share.

A low-level module (it imports nothing of medbackdoor's but the error type), so that the config, the registries
and the loggers can all use it without importing each other.
"""

from __future__ import annotations

import types
import typing
from typing import Any

from medbackdoor.errors import UserError


def check_value(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against a type hint (ints are accepted for floats); the checked value.

    Args:
        where: what the value is, for the message: ``config key train.lr`` or ``trigger blend option alpha``.

    Raises:
        UserError: one line, ``<where> must be ...``.
    """
    origin = typing.get_origin(hint)
    if hint is None or hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return check_value(value, arg, where)
            except UserError as exc:
                errors.append(exc)
        raise errors[0]
    if origin is list:
        if not isinstance(value, list | tuple):
            raise UserError(f"{where} must be a list, got {value!r}")
        (item,) = typing.get_args(hint)
        return [check_value(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where} must be a mapping, got {value!r}")
        return dict(value)
    if origin is not None:  # another generic (Sequence[str], tuple[int, ...]): its container type only
        if isinstance(origin, type) and not isinstance(value, origin):
            raise UserError(f"{where} must be of type {origin.__name__}, got {value!r}")
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is bool and not isinstance(value, bool):
        raise UserError(f"{where} must be true or false, got {value!r}")
    if hint in (int, float) and isinstance(value, bool):
        raise UserError(f"{where} must be a number, got {value!r}")
    if not isinstance(value, hint):
        raise UserError(f"{where} must be of type {hint.__name__}, got {value!r}")
    return value


def flatten(data: dict, prefix: str = "") -> dict:
    """A nested config dict as ``{dotted.key: value}`` (empty sections and mappings kept as values)."""
    out = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
