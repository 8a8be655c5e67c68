"""rechub-serving-annoy: the Annoy backend plugin of rechub-serving.

Registered through the ``rechub_serving`` entry point group, so after
``pip install rechub-serving-annoy``::

    from rechub_serving import builder_factory
    builder = builder_factory("annoy", metric="cosine", n_trees=50)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rechub_serving import hookimpl

from ._backend import AnnoyBackend
from ._engine import AnnoyEngine
from ._version import __version__

__all__ = ["AnnoyBackend", "AnnoyEngine", "__version__", "register_backends"]


@hookimpl
def register_backends(register: Callable[[type[Any]], None]) -> None:
    """Register the ``annoy`` backend."""
    register(AnnoyBackend)
