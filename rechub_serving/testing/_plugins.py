"""Register a plugin for the duration of a block (a test), then forget it."""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator
from typing import Any

from rechub_serving import hookimpl, register_plugin, reload_plugins, unregister_plugin

__all__ = ["registered_plugin", "reload_plugins"]


@contextlib.contextmanager
def registered_plugin(plugin: Any, name: str = "test-plugin") -> Iterator[Any]:
    """Register ``plugin`` as if it were installed; unregister it on exit.

    ``plugin`` is a module (or object) with a ``register_backends`` hook, a
    :class:`~rechub_serving.Backend` subclass, or a list of them.
    """
    if isinstance(plugin, (type, list, tuple)):
        backends = plugin if isinstance(plugin, (list, tuple)) else [plugin]
        module = types.ModuleType(name)

        @hookimpl
        def register_backends(register):
            for backend in backends:
                register(backend)

        module.register_backends = register_backends  # type: ignore[attr-defined]
        plugin = module
    register_plugin(plugin, name)
    try:
        yield plugin
    finally:
        unregister_plugin(name)
