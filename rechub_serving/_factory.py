"""The two entry points users call: :func:`builder_factory` and :func:`open_index`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ._base import Builder, Indexer
from ._errors import MissingPluginError, UnknownBackendError
from ._plugins import get_backend
from ._storage import read_manifest

__all__ = ["builder_factory", "open_index"]


def builder_factory(name: str, **params: Any) -> Builder:
    """A :class:`Builder` of backend ``name`` configured with ``params``.

    Unknown backends raise :class:`UnknownBackendError` listing the installed
    ones; unknown or invalid parameters raise with the valid names listed.
    """
    return get_backend(name).builder(**params)


def open_index(path: str | Path, **params: Any) -> Indexer:
    """Open a saved index; the backend is read from its manifest.

    ``params`` (search parameters and runtime options) override the saved ones.
    """
    manifest = read_manifest(Path(path), verify=False)
    name = manifest["backend"]
    try:
        info = get_backend(name)
    except UnknownBackendError:
        dist = manifest.get("plugin_distribution") or f"rechub-serving-{name}"
        raise MissingPluginError(
            f"{path} was saved by the {name!r} backend, which is not installed; install {dist} (pip install {dist})"
        ) from None
    return info.builder(**params).from_index_file(path)
