"""The Annoy engine: one ``annoy.AnnoyIndex`` plus the thread pool a query batch fans out over.

It answers in labels (Annoy's item numbers, which are the core's labels
``0..n-1``) and in Annoy's own distances, which :attr:`AnnoyEngine.distance`
declares so that the core converts them to the metric table. The core never
runs a search during ``save`` or ``close``, so the engine keeps no lock.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import annoy
import numpy as np
from rechub_serving import BackendError, Engine, Metric

from ._concurrency import QueryPool
from ._metrics import METRIC_OF, RAW_DISTANCE, AnnoyMetric
from ._params import default_search_k

__all__ = ["ENGINE_FILE", "AnnoyEngine"]

ENGINE_FILE = "index.ann"


class AnnoyEngine(Engine):
    """A built, loaded or adopted Annoy forest.

    ``on_disk_file`` is the file an ``on_disk_build`` index lives in (saved by
    copying it); ``release`` is called once on close (it frees that file for
    later builds).
    """

    def __init__(
        self,
        index: annoy.AnnoyIndex,
        *,
        dim: int,
        annoy_metric: AnnoyMetric,
        threads: int,
        prefault: bool = False,
        on_disk_file: str | None = None,
        release: Callable[[], None] | None = None,
    ):
        self._index: annoy.AnnoyIndex | None = index
        self._dim = dim
        self._annoy_metric = annoy_metric
        self._metric = METRIC_OF[annoy_metric]
        self._n_items = int(index.get_n_items())
        self._n_trees = int(index.get_n_trees())
        self._pool = QueryPool(threads)
        self._prefault = prefault
        self._on_disk_file = on_disk_file
        self._release = release
        self._auto_search_k: dict[int, int] = {}  # k -> default search_k
        self.distance = RAW_DISTANCE[annoy_metric]

    # -- description ---------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self._dim

    def __len__(self) -> int:
        return self._n_items

    @property
    def metric(self) -> Metric:
        return self._metric

    @property
    def n_trees(self) -> int:
        """Trees in the forest (as built, whether chosen or given)."""
        return self._n_trees

    @property
    def threads(self) -> int:
        """Threads a query batch fans out over."""
        return self._pool.threads

    @property
    def annoy_index(self) -> annoy.AnnoyIndex:
        """The ``annoy.AnnoyIndex`` itself (for engine-specific extras; queries go through the index)."""
        if self._index is None:
            raise BackendError("this Annoy engine is closed")
        return self._index

    def default_search_k(self, k: int) -> int:
        """The ``search_k`` a query for ``k`` results uses when none is given."""
        value = self._auto_search_k.get(k)
        if value is None:
            value = default_search_k(self._n_trees, self._n_items, k, self._metric)
            if len(self._auto_search_k) < 1024:
                self._auto_search_k[k] = value
        return value

    def resolved_params(self) -> Mapping[str, Any]:
        """The trees as built, and the default ``search_k`` at k = 10 (it grows in proportion to k)."""
        return {"n_trees": self._n_trees, "search_k": self.default_search_k(10)}

    # -- queries ---------------------------------------------------------------------
    def search(
        self, queries: np.ndarray, k: int, params: Mapping[str, Any], exclude: Sequence[np.ndarray] | None
    ) -> tuple[np.ndarray, np.ndarray]:
        index = self.annoy_index
        search_k = params["search_k"]
        if search_k is None:
            search_k = self.default_search_k(k)
        n = len(queries)
        if n == 1:  # the common single query: no pool, no padding (the core pads short rows)
            found, dist = index.get_nns_by_vector(queries[0].tolist(), k, search_k, True)
            return np.array(found, np.int64).reshape(1, -1), np.array(dist, np.float32).reshape(1, -1)
        labels = np.full((n, k), -1, dtype=np.int64)
        raw = np.zeros((n, k), dtype=np.float32)

        def work(start: int, stop: int) -> None:
            for i, row in enumerate(queries[start:stop].tolist(), start):
                found, dist = index.get_nns_by_vector(row, k, search_k, True)
                m = len(found)  # Annoy may come back short: the rest stays -1 padding
                if m:
                    labels[i, :m] = found
                    raw[i, :m] = dist

        self._pool.run(n, work)
        return labels, raw

    # -- persistence -------------------------------------------------------------------
    def save(self, directory: Path) -> dict[str, Any]:
        index = self.annoy_index
        target = directory / ENGINE_FILE
        if self._on_disk_file is not None:
            # An on-disk-built index *is* its file; Annoy's save() does nothing for it.
            shutil.copyfile(self._on_disk_file, target)
        elif not index.save(str(target), self._prefault):  # Annoy re-maps the index onto the saved file
            raise BackendError(f"annoy could not write {target.name}")
        return {
            "file": ENGINE_FILE,
            "annoy_metric": self._annoy_metric,
            "n_trees": self._n_trees,
            "n_items": self._n_items,
        }

    def close(self) -> None:
        index, self._index = self._index, None
        try:
            if index is not None:
                index.unload()
            self._pool.shutdown()
        finally:
            release, self._release = self._release, None
            if release is not None:
                release()
