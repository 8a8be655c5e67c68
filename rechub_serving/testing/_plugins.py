"""Register a plugin for the duration of a test, then forget it."""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator
from typing import Any

from .._plugins import _registry
from ..hookspecs import hookimpl

__all__ = ["registered_plugin", "reload_plugins"]


@contextlib.contextmanager
def registered_plugin(plugin: Any, name: str = "test-plugin") -> Iterator[Any]:
    """Register ``plugin`` (a module or object with ``register_backends``, or
    a Builder subclass, or a list of them) as if it were installed; unregister
    on exit.
    """
    if isinstance(plugin, (type, list, tuple)):
        builders = plugin if isinstance(plugin, (list, tuple)) else [plugin]
        module = types.ModuleType(name)

        @hookimpl
        def register_backends(register):
            for builder in builders:
                register(builder)

        module.register_backends = register_backends  # type: ignore[attr-defined]
        plugin = module
    _registry.register_plugin(plugin, name)
    try:
        yield plugin
    finally:
        _registry.unregister_plugin(name)


def reload_plugins() -> None:
    """Forget every loaded plugin; the next use discovers them again.

    Call it after changing ``RECHUB_SERVING_PLUGINS`` or installing a plugin
    in the running process.
    """
    _registry.reset()
