"""A small name → factory registry, used for datasets, triggers and (later) models and defenses."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

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

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items
