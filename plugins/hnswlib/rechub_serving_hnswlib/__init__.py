"""rechub-serving-hnswlib: an hnswlib backend for rechub-serving, and the template of a third-party plugin.

Installed, it is found through the entry point ``hnswlib = "rechub_serving_hnswlib"``
(group ``rechub_serving``), which names this module; pluggy calls
:func:`register_backends` on it. Uninstalled, ``Builder(HnswlibBackend, ...)``
uses the backend directly.

>>> from rechub_serving import builder_factory
>>> builder = builder_factory("hnswlib", metric="cosine", m=16, ef_search=64)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable

from rechub_serving import Backend, hookimpl

from .backend import DEFAULT_EF_SEARCH, HnswlibBackend, HnswlibEngine

__version__ = "0.2.0"

__all__ = ["DEFAULT_EF_SEARCH", "HnswlibBackend", "HnswlibEngine", "__version__", "register_backends"]


@hookimpl
def register_backends(register: Callable[[type[Backend]], None]) -> None:
    """The plugin's one hook: register the ``hnswlib`` backend."""
    register(HnswlibBackend)
