"""Plugin discovery: pluggy with entry points, one broken plugin never breaks the others.

Plugins are found through the entry point group ``rechub_serving``. The
environment variable ``RECHUB_SERVING_PLUGINS`` restricts which entry points
load: a comma-separated list of entry point names (empty: none but the
built-in ``numpy`` backend). Loading happens on first use, not at import.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import os
import threading
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import pluggy

from . import hookspecs
from ._builder import Builder
from ._capabilities import Capabilities
from ._engine import Backend
from ._errors import PluginError, UnknownBackendError

__all__ = [
    "BackendInfo",
    "BrokenPlugin",
    "get_backend",
    "list_backends",
    "list_broken_plugins",
    "origin_of",
    "register_plugin",
    "reload_plugins",
    "unregister_plugin",
]

logger = logging.getLogger("rechub_serving")

ENTRY_POINT_GROUP = "rechub_serving"
ENV_PLUGINS = "RECHUB_SERVING_PLUGINS"
BUILTIN_PLUGINS = ("rechub_serving._numpy_backend",)


@dataclass(frozen=True)
class BackendInfo:
    """A registered backend: what ``rechub-index backends`` shows."""

    name: str
    backend: type[Backend]
    plugin: str
    distribution: str
    version: str
    capabilities: Capabilities = field(default_factory=Capabilities)

    def builder(self, **params: Any) -> Builder:
        """A :class:`Builder` of this backend configured with ``params``."""
        return Builder(self.backend, **params)

    def schema(self) -> tuple[Any, ...]:
        """Every parameter of the backend, the common ones included."""
        from ._builder import COMMON_PARAMS

        return COMMON_PARAMS + tuple(self.backend.params)

    @property
    def engine_version(self) -> str | None:
        names = self.backend.engine_distribution
        if not names:
            return None
        from ._builder import _distribution_version

        return _distribution_version((names,) if isinstance(names, str) else tuple(names))

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "plugin": self.plugin,
            "distribution": self.distribution,
            "version": self.version,
            "engine_version": self.engine_version,
            "capabilities": self.capabilities.as_dict(),
            "params": [p.describe() for p in self.schema()],
        }


@dataclass(frozen=True)
class BrokenPlugin:
    """A plugin that failed to import or register, with its error."""

    plugin: str
    distribution: str
    error: str


class _Registry:
    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("rechub_serving")
        self.pm.add_hookspecs(hookspecs)
        self.backends: dict[str, BackendInfo] = {}
        self.broken: list[BrokenPlugin] = []
        self.dists: dict[str, tuple[str, str]] = {}  # plugin name -> (distribution, version)
        self.loaded = False
        self.lock = threading.RLock()

    def load(self) -> None:
        with self.lock:
            if self.loaded:
                return
            for module_name in BUILTIN_PLUGINS:
                self.pm.register(importlib.import_module(module_name), name=module_name)
                self.dists[module_name] = ("rechub-serving", _core_version())
            allowed = os.environ.get(ENV_PLUGINS)
            allowed_set = None if allowed is None else {n.strip() for n in allowed.split(",") if n.strip()}
            for ep in entry_points(group=ENTRY_POINT_GROUP):
                if allowed_set is not None and ep.name not in allowed_set:
                    logger.debug("plugin %s skipped by %s", ep.name, ENV_PLUGINS)
                    continue
                dist = ep.dist.name if ep.dist else "?"
                version = ep.dist.version if ep.dist else "?"
                if self.pm.has_plugin(ep.name):
                    continue
                try:
                    module = ep.load()
                    self.pm.register(module, name=ep.name)
                except Exception as exc:  # isolate: report and continue
                    self._broken(ep.name, dist, f"import failed: {type(exc).__name__}: {exc}")
                    continue
                self.dists[ep.name] = (dist, version)
            self.loaded = True
            self._collect()

    def _collect(self) -> None:
        self.backends.clear()
        for impl in self.pm.hook.register_backends.get_hookimpls():
            dist, version = self.dists.get(impl.plugin_name, ("?", "?"))
            self._call(impl, dist, version)

    def _call(self, impl: Any, dist: str, version: str) -> None:
        added: list[str] = []

        def register(backend: type) -> None:
            if not (isinstance(backend, type) and issubclass(backend, Backend)):
                raise PluginError(f"register() expects a rechub_serving.Backend subclass, got {backend!r}")
            name = getattr(backend, "name", None)
            if not isinstance(name, str) or not name:
                raise PluginError(f"{backend.__name__} has no 'name' class attribute")
            if name in self.backends:
                raise PluginError(
                    f"backend {name!r} is already registered by {self.backends[name].plugin} "
                    f"({self.backends[name].distribution})"
                )
            self.backends[name] = BackendInfo(name, backend, impl.plugin_name, dist, version, backend.capabilities)
            added.append(name)

        try:
            impl.function(register=register)
        except Exception as exc:
            for name in added:
                self.backends.pop(name, None)
            self._broken(impl.plugin_name, dist, f"register_backends failed: {type(exc).__name__}: {exc}")

    def _broken(self, plugin: str, dist: str, error: str) -> None:
        logger.warning("rechub-serving plugin %s (%s) is broken: %s", plugin, dist, error)
        self.broken.append(BrokenPlugin(plugin, dist, error))

    def register_plugin(self, module: Any, name: str, distribution: str = "(registered in code)") -> None:
        with self.lock:
            self.load()
            self.pm.register(module, name=name)
            self.dists[name] = (distribution, "0")
            for impl in self.pm.hook.register_backends.get_hookimpls():
                if impl.plugin_name == name:
                    self._call(impl, distribution, "0")

    def unregister_plugin(self, name: str) -> None:
        with self.lock:
            self.pm.unregister(name=name)
            self.dists.pop(name, None)
            self.broken = [b for b in self.broken if b.plugin != name]
            self._collect()

    def reset(self) -> None:
        with self.lock:
            self.__init__()  # type: ignore[misc]


def _core_version() -> str:
    from ._version import __version__

    return __version__


_registry = _Registry()


def list_backends() -> list[BackendInfo]:
    """The installed, working backends, sorted by name."""
    _registry.load()
    return sorted(_registry.backends.values(), key=lambda b: b.name)


def list_broken_plugins() -> list[BrokenPlugin]:
    """Plugins that failed to import or register, with their errors."""
    _registry.load()
    return list(_registry.broken)


def get_backend(name: str) -> BackendInfo:
    """The backend registered under ``name`` (case-insensitive)."""
    _registry.load()
    if not isinstance(name, str):
        raise UnknownBackendError(f"backend name must be a string, got {name!r}")
    info = _registry.backends.get(name) or _registry.backends.get(name.strip().lower())
    if info is not None:
        return info
    installed = ", ".join(sorted(_registry.backends)) or "(none)"
    broken = [b for b in _registry.broken if name.lower() in b.plugin.lower()]
    if broken:
        hint = f" The plugin {broken[0].plugin} is installed but broken: {broken[0].error}."
    else:
        close = difflib.get_close_matches(name.strip().lower(), list(_registry.backends), n=1, cutoff=0.75)
        if close:
            hint = f" Did you mean {close[0]!r}?"
        else:
            wanted = name.strip().lower()
            hint = (
                f" Backends come from plugin distributions: install rechub-serving-{wanted} "
                f"(or rechub-serving[{wanted}]) if it exists."
            )
    raise UnknownBackendError(f"no backend named {name!r} is installed (installed: {installed}).{hint}")


def origin_of(backend: type[Backend]) -> tuple[str, str]:
    """``(distribution, version)`` of the plugin that registered ``backend`` (without loading plugins)."""
    for info in list(_registry.backends.values()):
        if info.backend is backend:
            return info.distribution, info.version
    return "(not registered)", "0"


def register_plugin(plugin: Any, name: str, distribution: str = "(registered in code)") -> None:
    """Register a plugin module (or any object with ``register_backends``) in this process, as if installed."""
    _registry.register_plugin(plugin, name, distribution)


def unregister_plugin(name: str) -> None:
    """Forget a plugin registered with :func:`register_plugin` (or loaded from an entry point)."""
    _registry.unregister_plugin(name)


def reload_plugins() -> None:
    """Forget every loaded plugin; the next use discovers them again.

    Call it after changing ``RECHUB_SERVING_PLUGINS`` or installing a plugin
    in the running process.
    """
    _registry.reset()
