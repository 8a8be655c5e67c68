"""The ``hnswlib`` backend: an HNSW graph (hnswlib) behind the rechub-serving contract.

Written only against the public face of ``rechub_serving``. What the engine
returns and what the contract wants:

========  =================================  ===========================
metric    hnswlib space and its "distance"   converted to
========  =================================  ===========================
l2        ``l2``: squared Euclidean           as is (clamped at 0)
ip        ``ip``: ``1 - <q, x>``              ``1 - d`` = inner product
cosine    ``ip`` on normalised vectors        ``1 - d`` = cosine similarity
========  =================================  ===========================

Per-call ``ef_search`` without shared state: hnswlib keeps ``ef`` on the index
(``set_ef``) and searches with ``max(ef, k)``. This backend sets ``ef = 1``
once and asks ``knn_query`` for ``max(ef_search, k)`` neighbours, keeping the
first ``k``: the graph search is the very same one as ``set_ef(ef_search)``
followed by a top-``k`` query, yet nothing global changes, so concurrent
queries with different ``ef_search`` run in parallel and stay correct. The
cost is returning ``ef_search`` rows instead of ``k`` (measured at under 10 %).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import hnswlib
import numpy as np

from rechub_serving import (
    BackendError,
    Builder,
    Capabilities,
    DimensionMismatchError,
    IdMap,
    Indexer,
    InvalidParameterError,
    Metric,
    NotAnIndexError,
    Param,
    ReadWriteLock,
)

from ._native import NativeHeader, read_native_header

__all__ = ["HnswlibBuilder", "HnswlibIndexer"]

logger = logging.getLogger("rechub_serving_hnswlib")

ENGINE_FILE = "index.hnsw"
DEFAULT_EF_FLOOR = 64  # ef_search=None searches with max(64, 2k)
GROWTH = 1.5  # capacity growth factor when add() outgrows max_elements

_SHORT_RESULT = "contiguous 2D array"  # hnswlib's message when it finds fewer than k


def _space(metric: Metric) -> str:
    return "l2" if metric is Metric.L2 else "ip"


def search_width(ef_search: int | None, k: int) -> int:
    """The ``ef`` a query with ``k`` results uses: ``max(ef_search, k)`` (None: ``max(64, 2k)``)."""
    if ef_search is None:
        return max(DEFAULT_EF_FLOOR, 2 * k)
    return max(int(ef_search), k)


class HnswlibIndexer(Indexer):
    """An hnswlib graph. Labels are the core's labels; removed items are marked deleted."""

    def __init__(self, index: hnswlib.Index, metric: Metric, live: int, threads: int | None):
        self._index = index
        self._space_metric = metric
        self._live = int(live)  # items not marked deleted
        self._threads = -1 if threads is None else int(threads)
        self._rw = ReadWriteLock()
        index.set_ef(1)  # the width comes from the k asked for: see the module docstring

    # -- queries -------------------------------------------------------------------
    def _search(self, queries, k, params, exclude):
        width = search_width(params.get("ef_search"), k)
        with self._rw.shared():
            if exclude is None:
                labels, dist = self._knn(queries, min(width, self._live), None)
            else:
                labels, dist = self._knn_excluding(queries, k, width, exclude)
        return labels[:, :k], self._convert(dist[:, :k], labels[:, :k])

    def _knn_excluding(self, queries, k, width, exclude):
        """Native filtering: one filtered search per query row (hnswlib's filter is per call)."""
        out_labels = np.full((len(queries), k), -1, np.int64)
        out_dist = np.zeros((len(queries), k), np.float32)
        for i, row in enumerate(exclude):
            banned = frozenset(row.tolist())
            want = min(width, self._live - len(banned))
            if want <= 0:
                continue
            labels, dist = self._knn(queries[i : i + 1], want, _not_in(banned) if banned else None)
            n = min(k, labels.shape[1])
            out_labels[i, :n], out_dist[i, :n] = labels[0, :n], dist[0, :n]
        return out_labels, out_dist

    def _knn(self, queries: np.ndarray, width: int, keep: Any) -> tuple[np.ndarray, np.ndarray]:
        """``knn_query`` that never fails on a short result: short rows come back padded with -1.

        hnswlib raises when a row finds fewer than ``width`` items (a graph cut
        off by deletions, a strict filter). The batch is then split in halves
        until the failing rows are alone, and each of those is asked for the
        most results it can give (binary search on the count).
        """
        try:
            labels, dist = self._index.knn_query(queries, k=width, num_threads=self._threads, filter=keep)
            return labels.astype(np.int64), np.asarray(dist, np.float32)
        except RuntimeError as exc:
            if _SHORT_RESULT not in str(exc):
                raise BackendError(f"hnswlib search failed: {exc}") from exc
        if len(queries) > 1:
            half = len(queries) // 2
            top, bottom = self._knn(queries[:half], width, keep), self._knn(queries[half:], width, keep)
            return np.concatenate([top[0], bottom[0]]), np.concatenate([top[1], bottom[1]])
        logger.debug("hnswlib returned fewer than %d results for a query; padding", width)
        labels = np.full((1, width), -1, np.int64)
        dist = np.zeros((1, width), np.float32)
        lo, hi = 0, width - 1  # lo: a count known to work (best holds its result); hi: the largest that may
        best = None
        while lo < hi:
            mid = (lo + hi + 1) // 2
            try:
                best = self._index.knn_query(queries, k=mid, num_threads=1, filter=keep)
                lo = mid
            except RuntimeError:
                hi = mid - 1
        if best is not None:
            labels[:, :lo], dist[:, :lo] = best[0].astype(np.int64), best[1]
        return labels, dist

    def _convert(self, dist: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """hnswlib's numbers -> the metric table (padding slots are overwritten by the core)."""
        if self._space_metric is Metric.L2:
            return np.maximum(dist, np.float32(0.0))
        return np.float32(1.0) - dist

    # -- mutation --------------------------------------------------------------------
    def _add(self, vectors: np.ndarray, labels: np.ndarray | None) -> None:
        if labels is None:  # only for native_ids backends; the core always gives labels here
            raise BackendError("hnswlib backend: add() got no labels")
        with self._rw.exclusive():
            index = self._index
            needed = index.element_count + len(vectors)
            if needed > index.max_elements:
                grown = max(needed, int(index.max_elements * GROWTH) + 1)
                logger.debug("hnswlib: resizing from %d to %d elements", index.max_elements, grown)
                index.resize_index(grown)
            index.add_items(vectors, labels, num_threads=self._threads)
            self._live += len(vectors)

    def _remove(self, labels: np.ndarray) -> int:
        with self._rw.exclusive():
            for label in labels.tolist():
                self._index.mark_deleted(label)
            self._live -= len(labels)
        return len(labels)

    # -- persistence -------------------------------------------------------------------
    def _save(self, directory: Path) -> dict[str, Any]:
        with self._rw.shared():
            self._index.save_index(str(directory / ENGINE_FILE))
            return {
                "file": ENGINE_FILE,
                "space": _space(self._space_metric),
                "elements": int(self._index.element_count),
                "deleted": int(self._index.element_count - self._live),
                "max_elements": int(self._index.max_elements),
            }

    def _engine_count(self) -> int:
        return self._live

    def _engine_dim(self) -> int:
        return int(self._index.dim)

    def _close(self) -> None:
        self._index = None  # type: ignore[assignment]


class HnswlibBuilder(Builder):
    """HNSW graphs with hnswlib: approximate, fast, add and remove after the build."""

    name = "hnswlib"
    capabilities = Capabilities(exact=False, add=True, remove=True, native_filter=False, persist=True)
    params = (
        Param("m", int, 16, "graph degree M (links per node; memory grows with it)", minimum=2, maximum=2048),
        Param(
            "ef_construction",
            int,
            200,
            "candidate list size while building (higher: better graph, slower build)",
            aliases=("efConstruction",),
            minimum=1,
        ),
        Param(
            "ef_search",
            int,
            None,
            "candidate list size per query, per call; the search uses max(ef_search, k); None: max(64, 2k)",
            aliases=("ef", "efSearch"),
            minimum=1,
            search=True,
        ),
        Param(
            "threads",
            int,
            None,
            "threads of one build, add or query batch (None: all cores)",
            aliases=("num_threads", "n_jobs"),
            minimum=1,
            runtime=True,
        ),
        Param("seed", int, 100, "random seed of the level assignment", aliases=("random_seed",), minimum=0),
    )

    @classmethod
    def engine_version(cls) -> str | None:
        try:
            return metadata.version("hnswlib")
        except metadata.PackageNotFoundError:
            return None

    def _build(self, vectors: np.ndarray, ids: IdMap) -> HnswlibIndexer:
        n, dim = vectors.shape
        index = hnswlib.Index(space=_space(self.metric), dim=dim)
        config = self.config
        index.init_index(
            max_elements=n, M=config["m"], ef_construction=config["ef_construction"], random_seed=config["seed"]
        )
        threads = -1 if config["threads"] is None else config["threads"]
        index.add_items(vectors, np.arange(n, dtype=np.int64), num_threads=threads)
        return HnswlibIndexer(index, self.metric, n, config["threads"])

    def _load(self, directory: Path, manifest: Mapping[str, Any]) -> HnswlibIndexer:
        engine = manifest.get("engine") or {}
        file = directory / engine.get("file", ENGINE_FILE)
        if not file.is_file():
            raise NotAnIndexError(f"{directory.parent}: the hnswlib graph {file.name} is missing; save the index again")
        index = self._open_native(file, int(manifest["dim"]))
        return HnswlibIndexer(index, self.metric, int(manifest["count"]), self.config["threads"])

    def _adopt(self, path: Path) -> HnswlibIndexer:
        """Adopt a file written by ``hnswlib.Index.save_index``.

        hnswlib files do not record their space: the builder's ``metric`` says
        it (``l2`` for an ``l2`` file; ``ip`` for an ``ip`` file; ``cosine``
        for a ``cosine`` file, whose vectors hnswlib stored normalised). The
        live labels must be ``0..n-1``: they become the ids.
        """
        header = read_native_header(path)
        dim = self.config["dim"]
        if dim is not None and dim != header.dim:
            raise DimensionMismatchError(f"{path} holds {header.dim}-dimensional vectors, not dim={dim}")
        _check_adoptable(path, header)
        index = self._open_native(path, header.dim)
        return HnswlibIndexer(index, self.metric, header.live, self.config["threads"])

    def _open_native(self, file: Path, dim: int) -> hnswlib.Index:
        index = hnswlib.Index(space=_space(self.metric), dim=dim)
        try:
            index.load_index(str(file))
        except (RuntimeError, MemoryError, ValueError) as exc:
            raise NotAnIndexError(f"{file} is not a readable hnswlib index ({exc})") from None
        return index

    def _check_config(self, config: dict[str, Any]) -> None:
        if config["ef_construction"] < config["m"]:
            raise InvalidParameterError(
                f"hnswlib: ef_construction={config['ef_construction']} is smaller than m={config['m']}; "
                "the graph would be poor: use ef_construction >= m (default 200)"
            )


def _check_adoptable(path: Path, header: NativeHeader) -> None:
    live = np.sort(header.labels[~header.deleted])
    if not np.array_equal(live, np.arange(len(live))):
        raise NotAnIndexError(
            f"{path}: the hnswlib file's live labels are not 0..{len(live) - 1}, so they cannot serve as ids; "
            "rebuild with builder.from_embeddings(vectors, ids=labels)"
        )


def _not_in(banned: frozenset[int]):
    """hnswlib's filter: called with a label, True keeps it."""
    return lambda label: label not in banned
