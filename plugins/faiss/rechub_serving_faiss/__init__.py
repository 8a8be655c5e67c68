"""Faiss backend for rechub-serving (distribution ``rechub-serving-faiss``).

>>> from rechub_serving import builder_factory
>>> builder = builder_factory("faiss", index_type="HNSW", metric="cosine")  # doctest: +SKIP

Registered through the ``rechub_serving`` entry point group like any
third-party plugin; importing this module imports faiss.
"""

from __future__ import annotations

from rechub_serving import hookimpl

from ._builder import FaissBuilder
from ._indexer import FaissIndexer

__all__ = ["FaissBuilder", "FaissIndexer", "register_backends"]
__version__ = "0.1.0"


@hookimpl
def register_backends(register):
    """Register the ``faiss`` backend."""
    register(FaissBuilder)
