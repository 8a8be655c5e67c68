"""rechub-serving backend ``milvus``: embedded milvus-lite by default, a Milvus server with ``uri=``.

>>> from rechub_serving import builder_factory
>>> builder = builder_factory("milvus", metric="cosine")            # doctest: +SKIP
>>> index = builder.from_embeddings(item_vectors, ids=item_ids)      # doctest: +SKIP

The plugin module registers :class:`MilvusBuilder` through the
``rechub_serving`` entry point group.
"""

from __future__ import annotations

from rechub_serving import hookimpl

from ._backend import MilvusBuilder, MilvusIndexer
from ._connection import default_lite_path, redact_uri

__all__ = ["MilvusBuilder", "MilvusIndexer", "__version__", "default_lite_path", "redact_uri", "register_backends"]

__version__ = "0.1.0"


@hookimpl
def register_backends(register):
    register(MilvusBuilder)
