"""rechub-serving backend ``milvus``: embedded milvus-lite by default, a Milvus server with ``uri=``.

>>> from rechub_serving import builder_factory
>>> builder = builder_factory("milvus", metric="cosine")            # doctest: +SKIP
>>> index = builder.from_embeddings(item_vectors, ids=item_ids)      # doctest: +SKIP
>>> index.engine.location                                            # doctest: +SKIP

The module registers :class:`MilvusBackend` through the ``rechub_serving``
entry point group. :func:`open_collection` attaches to an existing
collection; :mod:`rechub_serving_milvus.inventory` lists and drops the
SDK's collections and databases (``rechub-index milvus``).
"""

from __future__ import annotations

from rechub_serving import hookimpl

from ._backend import MilvusBackend, open_collection
from ._connection import legacy_lite_path, redact_uri
from ._engine import MilvusEngine
from ._private import work_root

__all__ = [
    "MilvusBackend",
    "MilvusEngine",
    "__version__",
    "legacy_lite_path",
    "open_collection",
    "redact_uri",
    "register_backends",
    "work_root",
]

__version__ = "0.2.0"


@hookimpl
def register_backends(register):
    register(MilvusBackend)
