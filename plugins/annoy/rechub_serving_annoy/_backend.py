"""The ``annoy`` backend: Spotify's Annoy (random-projection forests) behind the rechub-serving contract.

* Metrics l2 / ip / cosine map onto Annoy's ``euclidean`` / ``dot`` /
  ``angular``; returned numbers are converted to the metric table
  (:mod:`._metrics`).
* Batches fan out over a thread pool: Annoy releases the GIL while it searches.
* Saved indexes are one Annoy file in ``engine/``; loading memory-maps it
  (``AnnoyIndex.load`` always does), so processes loading the same index share
  its pages.
* Annoy cannot change an index after ``build``: ``add`` and ``remove`` raise
  :class:`~rechub_serving.UnsupportedOperation` (the core raises it from the
  capabilities); rebuild with ``from_embeddings`` instead.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import shutil
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import annoy
import numpy as np
from rechub_serving import (
    BackendError,
    Builder,
    Capabilities,
    IdMap,
    IndexClosedError,
    Indexer,
    InvalidParameterError,
    NotAnIndexError,
    ReadWriteLock,
)

from ._concurrency import QueryPool, usable_cores
from ._metrics import ANNOY_METRIC, to_table
from ._params import PARAMS, auto_search_k, default_n_trees, resolve_threads

__all__ = ["AnnoyBuilder", "AnnoyIndexer"]

logger = logging.getLogger("rechub_serving.annoy")

ENGINE_FILE = "index.ann"
_ADD_BLOCK = 4096  # rows converted to Python lists at a time while adding items

# on_disk_build files mapped by open indexes: rebuilding into one would truncate it under them.
_files_in_use: set[str] = set()
_files_lock = threading.Lock()


class AnnoyIndexer(Indexer):
    """One ``annoy.AnnoyIndex`` plus a query thread pool."""

    def __init__(self, index: annoy.AnnoyIndex, threads: int, on_disk_file: str | None = None):
        self._index: annoy.AnnoyIndex | None = index
        self._n_items = index.get_n_items()
        self._n_trees = index.get_n_trees()
        self._pool = QueryPool(threads)
        self._rw = ReadWriteLock()
        self._on_disk_file = on_disk_file

    # -- queries -------------------------------------------------------------------
    def _search(self, queries, k, params, exclude):
        search_k = params["search_k"]
        if search_k is None:
            search_k = auto_search_k(self._n_trees, self._n_items, k, self.metric)
        n = len(queries)
        labels = np.full((n, k), -1, dtype=np.int64)
        raw = np.zeros((n, k), dtype=np.float32)

        with self._rw.shared():
            index = self._index
            if index is None:
                raise IndexClosedError("this annoy index is closed; open it again with open_index() or a builder")

            def work(start: int, stop: int) -> None:
                for i, row in enumerate(queries[start:stop].tolist(), start):
                    found, dist = index.get_nns_by_vector(row, k, search_k, True)
                    m = len(found)  # Annoy may come back short: the rest stays -1 padding
                    if m:
                        labels[i, :m] = found
                        raw[i, :m] = dist

            self._pool.run(n, work)
        return labels, to_table(self.metric, raw)

    # -- persistence ---------------------------------------------------------------
    def _save(self, directory: Path) -> dict[str, Any]:
        target = directory / ENGINE_FILE
        with self._rw.exclusive():  # AnnoyIndex.save remaps the index onto the new file
            index = self._require_open()
            if self._on_disk_file is not None:
                # An on-disk-built index *is* its file; Annoy's save() is a no-op for it.
                shutil.copyfile(self._on_disk_file, target)
            else:
                try:
                    saved = index.save(str(target))
                except OSError as exc:  # Annoy reports write errors (a full disk) as IOError
                    raise BackendError(f"annoy could not write {target}: {exc}") from exc
                if not saved:
                    raise BackendError(f"annoy could not write {target}")
        return {
            "file": ENGINE_FILE,
            "annoy_metric": ANNOY_METRIC[self.metric],
            "n_trees": self._n_trees,
            "n_items": self._n_items,
        }

    def _close(self) -> None:
        with self._rw.exclusive():  # waits for running queries
            index, self._index = self._index, None
            if index is not None:
                index.unload()
        self._pool.shutdown()
        if self._on_disk_file is not None:
            with _files_lock:
                _files_in_use.discard(self._on_disk_file)

    def _require_open(self) -> annoy.AnnoyIndex:
        if self._index is None:
            raise IndexClosedError("this annoy index is closed; open it again with open_index() or a builder")
        return self._index

    # -- adopted native files ------------------------------------------------------
    def _engine_count(self) -> int:
        return self._n_items

    def _engine_dim(self) -> int:
        return int(self._require_open().f)

    @property
    def n_trees(self) -> int:
        """Trees in the forest (as built, whether chosen or given)."""
        return self._n_trees


class AnnoyBuilder(Builder):
    """Approximate search with Annoy: small, memory-mapped indexes, fast builds, no updates."""

    name = "annoy"
    params = PARAMS
    capabilities = Capabilities(
        exact=False, add=False, remove=False, native_filter=False, persist=True, mmap=True, gpu=False
    )

    @classmethod
    def engine_version(cls) -> str | None:
        try:
            return importlib.metadata.version("annoy")  # the module has no __version__
        except importlib.metadata.PackageNotFoundError:
            return None

    def _check_config(self, config: dict[str, Any]) -> None:
        path = config.get("on_disk_build")
        if path is not None and Path(path).is_dir():
            raise InvalidParameterError(
                f"annoy: on_disk_build={path!r} is a directory; give the path of a file to build the index in"
            )

    @property
    def threads(self) -> int:
        """Query threads of indexes made by this builder."""
        return resolve_threads(self.config["threads"], usable_cores())

    # -- build ---------------------------------------------------------------------
    def _build(self, vectors: np.ndarray, ids: IdMap) -> AnnoyIndexer:
        n, dim = vectors.shape
        index = annoy.AnnoyIndex(dim, ANNOY_METRIC[self.metric])
        if self.config["seed"] is not None:
            index.set_seed(self.config["seed"])
        on_disk = self._claim_on_disk_file()
        try:
            if on_disk is not None:
                try:
                    index.on_disk_build(on_disk)
                except OSError as exc:
                    raise InvalidParameterError(f"annoy: cannot build in {on_disk!r}: {exc}") from None
            for start in range(0, n, _ADD_BLOCK):
                for label, row in enumerate(vectors[start : start + _ADD_BLOCK].tolist(), start):
                    index.add_item(label, row)
            n_trees = self.config["n_trees"] or default_n_trees(n)
            n_jobs = resolve_threads(self.config["n_jobs"], self.threads)
            if not index.build(n_trees, n_jobs):
                raise BackendError("annoy failed to build the index")
        except BaseException:
            self._release_on_disk_file(on_disk)
            index.unload()
            raise
        logger.debug("annoy: built %d trees over %d x %d (%d build threads)", n_trees, n, dim, n_jobs)
        return AnnoyIndexer(index, self.threads, on_disk)

    def _claim_on_disk_file(self) -> str | None:
        path = self.config["on_disk_build"]
        if path is None:
            return None
        path = os.path.realpath(os.path.expanduser(path))
        with _files_lock:
            if path in _files_in_use:
                raise InvalidParameterError(
                    f"annoy: on_disk_build file {path} belongs to an open index; rebuilding there would "
                    "truncate it under that index: close it first or choose another path"
                )
            _files_in_use.add(path)
        return path

    @staticmethod
    def _release_on_disk_file(path: str | None) -> None:
        if path is not None:
            with _files_lock:
                _files_in_use.discard(path)

    # -- load ----------------------------------------------------------------------
    def _load(self, directory: Path, manifest: Mapping[str, Any]) -> AnnoyIndexer:
        engine = manifest.get("engine") or {}
        path = directory / engine.get("file", ENGINE_FILE)
        index = self._open_file(path, int(manifest["dim"]))
        if index.get_n_items() != manifest["count"]:
            count = index.get_n_items()
            index.unload()
            raise NotAnIndexError(
                f"{path} holds {count} items but the manifest says {manifest['count']}; the index is damaged"
            )
        return AnnoyIndexer(index, self.threads)

    def _adopt(self, path: Path) -> AnnoyIndexer:
        """Adopt a bare file written by ``AnnoyIndex.save`` (it records neither dim nor metric)."""
        missing = [name for name in ("dim", "metric") if self.given_params.get(name) is None]
        if missing:
            raise InvalidParameterError(
                f"{path} is a bare Annoy file, which records neither its dimension nor its metric: give "
                f"{' and '.join(missing)} to the builder, e.g. builder_factory('annoy', dim=64, metric='angular')"
            )
        index = self._open_file(path, int(self.config["dim"]))
        if index.get_n_items() == 0:
            index.unload()
            raise NotAnIndexError(f"{path} is an Annoy file without items")
        return AnnoyIndexer(index, self.threads)

    def _open_file(self, path: Path, dim: int) -> annoy.AnnoyIndex:
        index = annoy.AnnoyIndex(dim, ANNOY_METRIC[self.metric])
        try:
            index.load(str(path), self.config["prefault"])
        except OSError as exc:
            raise NotAnIndexError(
                f"{path} cannot be read as an Annoy index of dimension {dim} and metric "
                f"{ANNOY_METRIC[self.metric]!r} ({exc}); check dim= and metric= against how it was built"
            ) from None
        return index
