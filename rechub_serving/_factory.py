"""The two entry points users call: :func:`builder_factory` and :func:`open_index`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ._builder import Builder
from ._errors import MissingPluginError, UnknownBackendError
from ._indexer import Indexer
from ._plugins import get_backend
from ._storage import read_manifest

__all__ = ["builder_factory", "open_index"]


def builder_factory(backend: str, /, **params: Any) -> Builder:
    """A :class:`Builder` of backend ``backend`` configured with ``params``.

    Unknown backends raise :class:`UnknownBackendError` listing the installed
    ones (with a close match suggested); unknown or invalid parameters raise
    with the valid names listed. The backend name is positional-only, so a
    parameter may be called ``name`` (torch-rechub's Milvus collection name).
    """
    return get_backend(backend).builder(**params)


def open_index(path: str | Path, **params: Any) -> Indexer:
    """Open a saved index; the backend is read from its manifest.

    ``params`` (search parameters and runtime options) override the saved
    ones. A reader that opens ``path`` while another process saves there gets
    the old or the new index, whole.
    """
    manifest = read_manifest(path)
    name = manifest["backend"]
    try:
        info = get_backend(name)
    except UnknownBackendError:
        dist = manifest.get("plugin_distribution")
        dist = dist if isinstance(dist, str) and dist.startswith("rechub-serving") else f"rechub-serving-{name}"
        raise MissingPluginError(
            f"{path} was saved by the {name!r} backend, which is not installed; install {dist} (pip install {dist})"
        ) from None
    return info.builder(**params).from_index_file(path)
