"""A small name → factory registry for datasets, triggers, models and defenses, open to a user's own components.

A component is chosen by name. The name is looked up, in order:

1. among the built-in components (registered with ``@REGISTRY.register("name")``);
2. as a plugin spec, ``package.module:Name`` (an importable module) or ``path/to/file.py:Name`` (a file, loaded
   under a private module name; a relative path is read from the working directory);
3. among the Python entry points of the registry's group (``medbackdoor.defenses``, ``medbackdoor.triggers``,
   ``medbackdoor.datasets``, ``medbackdoor.models``), so an installed package adds components by name.

A plugin is checked like a built-in: the same option check, and one line (:class:`UserError`) when its module
cannot be imported, the name is missing, or the object is of the wrong kind (``base``). :meth:`Registry.origin`
says where a name came from (for manifests and defense summaries).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
import typing
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any, Generic, TypeVar

from medbackdoor._values import check_value
from medbackdoor.errors import UserError

T = TypeVar("T")


def is_plugin_spec(name: str) -> bool:
    """True for ``module:Name`` or ``file.py:Name`` (a name with one colon, a non-empty target and attribute)."""
    target, sep, attr = str(name).rpartition(":")
    return bool(sep and target and attr.isidentifier())


def plugin_spec(name: str) -> str:
    """``name`` with the file of a ``file.py:Name`` spec made absolute (so another process or working directory
    finds the same file); other names unchanged."""
    if not is_plugin_spec(name):
        return name
    target, _, attr = name.rpartition(":")
    if target.endswith(".py"):
        return f"{Path(target).expanduser().resolve()}:{attr}"
    return name


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def load_object(spec: str, what: str) -> tuple[Any, dict]:
    """Import ``module:Name`` or ``file.py:Name``; returns the object and where it came from (one line on error).

    A file is loaded once per process under a module name made from its path, so two loads of one file give the
    same class.
    """
    target, _, attr = spec.rpartition(":")
    if target.endswith(".py"):
        path = Path(target).expanduser().resolve()
        if not path.is_file():
            raise UserError(f"{what}: plugin file {path} does not exist")
        key = "medbackdoor_plugin_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
        module = sys.modules.get(key)
        if module is None:
            loader_spec = importlib.util.spec_from_file_location(key, path)
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[key] = module
            try:
                loader_spec.loader.exec_module(module)
            except Exception as exc:  # noqa: BLE001 - any failure of the user's file is one line
                del sys.modules[key]
                raise UserError(f"{what}: cannot load plugin file {path}: {type(exc).__name__}: "
                                f"{_first_line(exc)}") from None
        origin = {"spec": f"{path}:{attr}", "file": str(path), "sha256": _file_digest(path)}
    else:
        try:
            module = importlib.import_module(target)
        except Exception as exc:  # noqa: BLE001 - a missing module or one that fails on import: one line
            raise UserError(f"{what}: cannot import plugin module {target!r}: {type(exc).__name__}: "
                            f"{_first_line(exc)}") from None
        origin = {"spec": spec, "module": target}
        file = getattr(module, "__file__", None)
        if file:
            origin.update(file=str(file), sha256=_file_digest(Path(file)))
    if not hasattr(module, attr):
        raise UserError(f"{what}: plugin {spec} not found: {target} has no {attr!r}")
    return getattr(module, attr), origin


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


class Registry(Generic[T]):
    """Maps names to classes or factories; ``register`` is a decorator.

    Args:
        kind: what the registry holds, used in error messages ("dataset", "trigger").
        group: the entry-point group installed packages add components to (None: no entry points).
        base: the class every component must subclass (None: any callable). It may be set after the registry is
            made (a base class defined in the same module).
    """

    def __init__(self, kind: str, group: str | None = None, base: type | None = None) -> None:
        self.kind, self.group, self.base = kind, group, base
        self._items: dict[str, Callable[..., T]] = {}
        self._plugins: dict[str, tuple[Callable[..., T], dict]] = {}  # loaded plugin specs and entry points

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def add(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = factory
            return factory

        return add

    def get(self, name: str) -> Callable[..., T]:
        """The factory for ``name``: built-in, plugin spec or entry point (one line when there is none)."""
        if name in self._items:
            return self._items[name]
        return self._plugin(name)[0]

    def origin(self, name: str) -> dict:
        """Where ``name`` comes from: ``{"builtin": name}``, or a plugin's spec, file and SHA-256 (first 16 hex
        digits), or an entry point's distribution and version."""
        if name in self._items:
            return {"builtin": name}
        return dict(self._plugin(name)[1])

    def is_builtin(self, name: str) -> bool:
        return name in self._items

    def _plugin(self, name: str) -> tuple[Callable[..., T], dict]:
        if name in self._plugins:
            return self._plugins[name]
        if is_plugin_spec(name):
            factory, origin = load_object(name, f"{self.kind} {name}")
        else:
            point = self._entry_points().get(name)
            if point is None:
                raise UserError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())} "
                                f"(or a plugin: package.module:Name or path/to/file.py:Name)")
            try:
                factory = point.load()
            except Exception as exc:  # noqa: BLE001 - a broken installed plugin is one line
                raise UserError(f"{self.kind} {name}: cannot load entry point {point.value}: "
                                f"{type(exc).__name__}: {_first_line(exc)}") from None
            dist = getattr(point, "dist", None)
            origin = {"entry_point": f"{self.group}:{name}", "value": point.value,
                      "distribution": getattr(dist, "name", None), "version": getattr(dist, "version", None)}
        self._check_kind(name, factory)
        self._plugins[name] = (factory, origin)
        return self._plugins[name]

    def _check_kind(self, name: str, factory) -> None:
        base = self.base
        if base is not None:
            if not (inspect.isclass(factory) and issubclass(factory, base)):
                raise UserError(f"{self.kind} {name}: {_describe(factory)} is not a {self.kind}: it must be a "
                                f"subclass of {base.__module__}.{base.__qualname__}")
        elif not callable(factory):
            raise UserError(f"{self.kind} {name}: {_describe(factory)} is not callable")

    def _entry_points(self) -> dict:
        if self.group is None:
            return {}
        return {p.name: p for p in metadata.entry_points(group=self.group) if p.name not in self._items}

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

        The one check of a component's options (datasets, triggers, models, defenses), with the same rules as
        config keys (:func:`medbackdoor._values.check_value`). ``given`` names arguments the caller supplies (a
        dataset's ``root``, ``seed``); they are never listed as options.
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
        """The built-in names and those of installed entry points (plugin specs are not listed)."""
        return sorted({*self._items, *self._entry_points()})

    def builtin_names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        if name in self._items:
            return True
        try:
            self._plugin(name)
        except UserError:
            return False
        return True


def _describe(obj) -> str:
    return getattr(obj, "__qualname__", None) or type(obj).__name__
