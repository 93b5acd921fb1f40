"""A small name → factory registry, used for datasets, triggers and (later) models and defenses."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from medbackdoor._values import check_value
from medbackdoor.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to classes or factories; ``register`` is a decorator.

    Args:
        kind: what the registry holds, used in error messages ("dataset", "trigger").
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def add(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = factory
            return factory

        return add

    def get(self, name: str) -> Callable[..., T]:
        if name not in self._items:
            raise UserError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(sorted(self._items))}")
        return self._items[name]

    def create(self, name: str, **kwargs) -> T:
        return self.get(name)(**kwargs)

    def options(self, name: str) -> dict[str, inspect.Parameter]:
        """The keyword options ``name``'s factory takes, by name (``**kwargs`` left out: see :meth:`takes_any`)."""
        return {k: p for k, p in inspect.signature(self.get(name)).parameters.items()
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}

    def takes_any(self, name: str) -> bool:
        """True when ``name``'s factory takes ``**kwargs`` (any option name)."""
        return any(p.kind == p.VAR_KEYWORD for p in inspect.signature(self.get(name)).parameters.values())

    def check_options(self, name: str, options: dict[str, Any], what: str | None = None,
                      given: dict[str, Any] | None = None) -> dict[str, Any]:
        """The user options of ``name``, checked against its constructor without building it: an unknown option or
        one of the wrong type is one line (:class:`UserError`). Returns the options with checked values.

        The one check of a component's options (datasets, triggers, defenses), with the same rules as config keys
        (:func:`medbackdoor._values.check_value`). ``given`` names arguments the caller supplies (a dataset's
        ``root``, ``seed``); they are never listed as options.
        """
        what = what or f"{self.kind} {name}"
        factory, params = self.get(name), self.options(name)
        try:
            hints = typing.get_type_hints(factory.__init__ if inspect.isclass(factory) else factory)
        except Exception:  # noqa: BLE001 - unresolvable annotations: check names only
            hints = {}
        checked = {}
        for key, value in options.items():
            if key not in params and not self.takes_any(name):
                listed = [k for k in params if k not in (given or {})]
                raise UserError(f"{what} has no option {key!r}; its options: {', '.join(listed) or 'none'}")
            checked[key] = check_value(value, hints.get(key), f"{what} option {key}")
        return checked

    def create_checked(self, name: str, options: dict[str, Any], what: str | None = None,
                       given: dict[str, Any] | None = None) -> T:
        """Build ``name`` from user options checked by :meth:`check_options`.

        Args:
            given: arguments the caller supplies (not the user: a dataset's ``root``, ``seed``), passed as they are
                where the factory takes them and dropped where it does not; never listed as options.
        """
        params = self.options(name)
        passed = {k: v for k, v in (given or {}).items() if k in params and k not in options}
        checked = self.check_options(name, options, what, given)
        return self.get(name)(**passed, **checked)

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items

