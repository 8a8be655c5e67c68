"""The plugin hook. A plugin module implements it with ``@hookimpl``.

Entry points in the group ``rechub_serving`` must name a *module* (pluggy
registers the object the entry point names and looks for hook functions on it).
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

__all__ = ["hookimpl", "hookspec", "register_backends"]

hookspec = pluggy.HookspecMarker("rechub_serving")
hookimpl = pluggy.HookimplMarker("rechub_serving")


@hookspec
def register_backends(register: Callable[[type], None]) -> None:
    """Call ``register(MyBackend)`` once per :class:`~rechub_serving.Backend` subclass the plugin provides."""
