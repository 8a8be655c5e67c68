"""Faiss backend for rechub-serving (distribution ``rechub-serving-faiss``).

>>> from rechub_serving import builder_factory
>>> builder = builder_factory("faiss", index_type="HNSW", metric="cosine")  # doctest: +SKIP

Registered through the ``rechub_serving`` entry point group like any
third-party plugin; importing this module imports faiss. The plugin is a
:class:`FaissBackend` (schema, build, load, adopt) and the
:class:`FaissEngine` objects it makes (search, add, remove, save).
"""

from __future__ import annotations

from typing import Any

from rechub_serving import hookimpl

from ._backend import FaissBackend
from ._engine import FaissEngine

__all__ = ["FaissBackend", "FaissEngine", "__version__", "register_backends"]
__version__ = "0.2.0"


@hookimpl
def register_backends(register: Any) -> None:
    """Register the ``faiss`` backend."""
    register(FaissBackend)
