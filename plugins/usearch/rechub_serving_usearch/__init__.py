"""rechub-serving-usearch: USearch (HNSW; f32, f16, bf16 or i8 storage; memory-mapped serving) as a backend.

>>> from rechub_serving import builder_factory
>>> builder = builder_factory("usearch", metric="cosine", dtype="i8")  # doctest: +SKIP
"""

from __future__ import annotations

from rechub_serving import hookimpl

from ._backend import UsearchBackend, UsearchEngine

__version__ = "0.2.0"

__all__ = ["UsearchBackend", "UsearchEngine", "__version__", "register_backends"]


@hookimpl
def register_backends(register):
    """Register the ``usearch`` backend."""
    register(UsearchBackend)
