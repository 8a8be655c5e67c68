"""rechub-serving-annoy: the Annoy backend plugin of rechub-serving.

Registered through the ``rechub_serving`` entry point group, so after
``pip install rechub-serving-annoy``::

    from rechub_serving import builder_factory
    builder = builder_factory("annoy", metric="cosine", n_trees=50)
"""

from __future__ import annotations

from rechub_serving import hookimpl

from ._backend import AnnoyBuilder, AnnoyIndexer
from ._version import __version__

__all__ = ["AnnoyBuilder", "AnnoyIndexer", "__version__", "register_backends"]


@hookimpl
def register_backends(register):
    """Register the ``annoy`` backend."""
    register(AnnoyBuilder)
