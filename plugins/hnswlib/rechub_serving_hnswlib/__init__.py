"""rechub-serving-hnswlib: an hnswlib backend for rechub-serving.

The example third-party plugin: it imports only the public face of
``rechub_serving`` and is found through the entry point group
``rechub_serving`` (``hnswlib = "rechub_serving_hnswlib"``), which names this
module; pluggy calls :func:`register_backends` on it.

>>> from rechub_serving import builder_factory
>>> builder = builder_factory("hnswlib", metric="cosine", m=16, ef_search=64)  # doctest: +SKIP
"""

from __future__ import annotations

from rechub_serving import hookimpl

from .backend import HnswlibBuilder, HnswlibIndexer

__version__ = "0.1.0"

__all__ = ["HnswlibBuilder", "HnswlibIndexer", "__version__", "register_backends"]


@hookimpl
def register_backends(register):
    """The plugin's one hook: register the ``hnswlib`` backend."""
    register(HnswlibBuilder)
