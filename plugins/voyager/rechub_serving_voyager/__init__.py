"""rechub-serving-voyager: Spotify's Voyager (HNSW; float32, float8 or E4M3 storage) as a backend.

>>> from rechub_serving import builder_factory
>>> builder = builder_factory("voyager", metric="cosine", dtype="float8")  # doctest: +SKIP
"""

from __future__ import annotations

from rechub_serving import hookimpl

from ._backend import VoyagerBackend, VoyagerEngine

__version__ = "0.2.0"

__all__ = ["VoyagerBackend", "VoyagerEngine", "__version__", "register_backends"]


@hookimpl
def register_backends(register):
    """Register the ``voyager`` backend."""
    register(VoyagerBackend)
