"""The faiss :class:`~rechub_serving.Engine`: search, add, remove, save.

The core serialises searches against add, remove, save and close, so the
engine holds no lock. Searches never write shared state: per-call ``nprobe``
/ ``ef_search`` travel in a faiss ``SearchParameters*`` object, built once
per distinct value and reused (faiss only reads it); a call with the index's
own settings passes none at all.

The hot path avoids faiss's ``IndexIDMap`` search: its label translation is
an OpenMP ``parallel for`` over ``n * k`` entries, which wakes the whole
thread team on every call, while a single-query flat search runs on one
thread; on a many-core machine that wake-up cost more than the rest of the
SDK (issue 13, item 9). So an ``IndexIDMap``-wrapped index (``Flat``, ``SQ8``,
adopted IDMap files) is searched through its inner index, and positions
become labels in numpy: not at all while they are equal (an index nothing
was removed from), else through a view of the id map. The IDMap stays the
stored structure (``add_with_ids``, ``remove_ids``, the saved file) and is
used for searches with an exclusion selector.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from rechub_serving import BackendError, Capabilities, Engine, Metric, RawDistance

from ._inspect import exclusion_selector, id_map_view, inspect_index, metric_of, search_parameters

__all__ = ["INDEX_FILE", "FaissEngine"]

logger = logging.getLogger("rechub_serving.faiss")

INDEX_FILE = "index.faiss"
_PARAMS_CACHE_SIZE = 256


class FaissEngine(Engine):
    """One faiss index whose labels are the core's int64 labels.

    ``resolved`` holds the parameters chosen at build time (``factory``,
    ``nlist``, ``nprobe``, ``m``, ``ef_search``...); ``mapped`` says the
    index was memory-mapped (read-only); ``gpu_index`` is its GPU copy, if any.
    """

    def __init__(
        self, index: Any, resolved: Mapping[str, Any] | None = None, *, mapped: bool = False, gpu_index: Any = None
    ):
        self.index: Any = index  # the faiss CPU index (public: benchmarks, experts)
        self._metric = metric_of(index)
        self.distance = RawDistance.SQUARED_L2 if self._metric is Metric.L2 else RawDistance.INNER_PRODUCT
        self._resolved = dict(resolved or {})
        self._mapped = mapped
        self._gpu_index = gpu_index
        self._params_cache: dict[tuple[int, int], Any] = {}
        self._refresh(identity=None)

    def _refresh(self, identity: bool | None) -> None:
        """Recompute what searches read, after a build, load, add or remove (never during a search)."""
        info = self._info = inspect_index(self.index)
        self._native_nprobe = int(info.ivf.nprobe) if info.ivf is not None else 0
        self._native_ef = int(info.hnsw.hnsw.efSearch) if info.hnsw is not None else 0
        self._params_cache.clear()
        self._id_of: np.ndarray | None = None
        if self._gpu_index is not None:
            self._searcher = self._gpu_index
        elif info.id_map is not None:
            self._searcher = faiss.downcast_index(info.id_map.index)
            view = id_map_view(info.id_map)
            if identity is None:
                identity = bool(np.array_equal(view, np.arange(len(view))))
            self._id_of = None if identity else view
        else:
            self._searcher = self.index

    # -- description -----------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self.index.d)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def metric(self) -> Metric:
        return self._metric

    def resolved_params(self) -> dict[str, Any]:
        out = dict(self._resolved)
        info = self._info
        if info.ivf is not None:
            out.update(nlist=int(info.ivf.nlist), nprobe=self._native_nprobe)
        if info.hnsw is not None:
            out["ef_search"] = self._native_ef
        return out

    def capabilities(self, declared: Capabilities) -> Capabilities:
        info = self._info
        writable = not self._mapped
        return Capabilities(
            exact=declared.exact and info.family == "flat",
            add=declared.add and writable,
            remove=declared.remove and info.can_remove and writable,
            native_filter=declared.native_filter and info.selector and self._gpu_index is None,
            persist=declared.persist,
            mmap=declared.mmap,
            gpu=self._gpu_index is not None,
        )

    # -- search -------------------------------------------------------------------------
    def can_filter(self, exclude: Sequence[np.ndarray]) -> bool:
        """A faiss selector applies to a whole call: native only when every row excludes the same labels."""
        first = exclude[0]
        return all(r is first or np.array_equal(r, first) for r in exclude[1:])

    def search(
        self, queries: np.ndarray, k: int, params: Mapping[str, Any], exclude: Sequence[np.ndarray] | None
    ) -> tuple[np.ndarray, np.ndarray]:
        own = self._effective(params, k)
        if exclude is not None:
            nprobe, ef = own or (self._native_nprobe, self._native_ef)
            selector = exclusion_selector(exclude[0])
            target = self.index if self._gpu_index is None else self._gpu_index
            sp = search_parameters(self._info, nprobe or None, ef or None, selector)
            dist, labels = target.search(queries, k, params=sp)
            return labels, dist
        if own is None:
            dist, pos = self._searcher.search(queries, k)
        else:
            dist, pos = self._searcher.search(queries, k, params=self._cached_params(own))
        id_of = self._id_of
        if id_of is None:
            return pos, dist
        labels = id_of.take(pos)
        if pos.min() < 0:  # short rows: faiss pads with -1
            labels[pos < 0] = -1
        return labels, dist

    def _effective(self, params: Mapping[str, Any], k: int) -> tuple[int, int] | None:
        """``(nprobe, ef_search)`` of this call (0: not this kind of index); None when they are the index's own."""
        nprobe, ef = self._native_nprobe, self._native_ef
        if nprobe:
            wanted = params.get("nprobe")
            if wanted is not None:
                nprobe = int(wanted)
        if ef:
            wanted = params.get("ef_search")
            ef = max(ef if wanted is None else int(wanted), k)  # HNSW needs a beam of at least k
        if nprobe == self._native_nprobe and ef == self._native_ef:
            return None
        return nprobe, ef

    def _cached_params(self, key: tuple[int, int]) -> Any:
        params = self._params_cache.get(key)
        if params is None:
            if len(self._params_cache) >= _PARAMS_CACHE_SIZE:
                self._params_cache.clear()
            params = search_parameters(self._info, key[0] or None, key[1] or None)
            self._params_cache[key] = params
        return params

    # -- changes ------------------------------------------------------------------------
    def add(self, vectors: np.ndarray, labels: np.ndarray) -> None:
        index = self.index
        start = int(index.ntotal)
        follows = bool(np.array_equal(labels, np.arange(start, start + len(labels))))
        if self._info.has_ids:
            index.add_with_ids(vectors, np.ascontiguousarray(labels, dtype=np.int64))
        elif not follows:
            raise BackendError(
                "this faiss index stores positions, not ids, and the new labels do not follow on; "
                "rebuild it with from_embeddings()"
            )
        else:
            index.add(vectors)
        self._changed(identity=self._id_of is None and follows)

    def remove(self, labels: np.ndarray) -> int:
        removed = int(self.index.remove_ids(np.ascontiguousarray(labels, dtype=np.int64)))
        self._changed(identity=None)
        return removed

    def _changed(self, identity: bool | None) -> None:
        if self._gpu_index is not None:  # pragma: no cover - needs a GPU build of faiss
            self._gpu_index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, self.index)
        self._refresh(identity)

    # -- files ----------------------------------------------------------------------------
    def save(self, directory: Path) -> dict[str, Any]:
        faiss.write_index(self.index, str(directory / INDEX_FILE))
        return {"file": INDEX_FILE, "resolved": self._resolved, "faiss_class": type(self.index).__name__}

    def close(self) -> None:
        self._id_of = None  # a view into the index's memory: drop it before the index
        self._params_cache.clear()
        self.index = self._searcher = self._gpu_index = None
