"""The ``hnswlib`` backend: an HNSW graph behind the rechub-serving engine protocol.

A plugin is a :class:`~rechub_serving.Backend` (schema, capabilities, how to
build, load and adopt) and an :class:`~rechub_serving.Engine` (search, add,
remove, save). The core validates inputs, owns the ids, applies ``exclude``,
pads, converts distances and serialises searches against changes; this
module only speaks hnswlib. Three facts about hnswlib shape it:

* Distances. The ``l2`` space returns the squared distance and the ``ip``
  space ``1 - <q, x>`` (``cosine`` is ``ip`` on vectors the core normalised):
  ``Engine.distance`` says so and the core converts.
* Per-call ``ef_search``. hnswlib keeps ``ef`` on the index and searches with
  ``max(ef, k)``. The engine pins ``ef = 1`` once and asks ``knn_query`` for
  ``max(ef_search, k)`` neighbours, keeping the first ``k``: the very search
  ``set_ef(ef_search)`` would run, with nothing shared to set, so concurrent
  calls with different values need no lock.
* Short results. ``knn_query`` raises ("contiguous 2D array") when a row
  reaches fewer live items than asked (after many removals); those rows are
  asked again alone and padded with -1 (:meth:`HnswlibEngine._reachable`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import hnswlib  # type: ignore[import-untyped, unused-ignore]  # typed with types-hnswlib installed
import numpy as np

from rechub_serving import (
    Adopted,
    Backend,
    BackendConfig,
    Capabilities,
    Engine,
    EngineFiles,
    InvalidParameterError,
    Metric,
    NotAnIndexError,
    Param,
    RawDistance,
)

from ._native import read_native_header

__all__ = ["DEFAULT_EF_SEARCH", "HnswlibBackend", "HnswlibEngine"]

ENGINE_FILE = "index.hnsw"
#: The fastest ef_search reaching recall@10 >= 0.95 on 100,000 x 64 clustered data (README, "ef_search").
DEFAULT_EF_SEARCH = 64
TUNE_GRID = (10, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024)
GROWTH = 1.5  # capacity growth when add() outgrows max_elements
RESULT_SLOTS = 1 << 22  # results one knn_query call may hold: ef_search of them per query


class HnswlibEngine(Engine):
    """One ``hnswlib.Index``; its labels are the core's labels, removed items are marked deleted."""

    def __init__(self, index: hnswlib.Index, metric: Metric, live: int, threads: int | None):
        index.set_ef(1)  # the search width comes from the k asked for (module docstring)
        self._index = index
        self._live = live  # items not marked deleted
        self._threads = threads or -1  # -1: all cores
        self.distance = RawDistance.SQUARED_L2 if metric is Metric.L2 else RawDistance.ONE_MINUS_IP

    @property
    def index(self) -> hnswlib.Index:
        """The ``hnswlib.Index`` itself, for what the protocol does not cover (``get_items``...)."""
        return self._index

    @property
    def dim(self) -> int:
        return int(self._index.dim)

    def __len__(self) -> int:
        return self._live

    def search(
        self, queries: np.ndarray, k: int, params: Mapping[str, Any], exclude: Sequence[np.ndarray] | None
    ) -> tuple[np.ndarray, np.ndarray]:
        width = min(max(params["ef_search"], k), self._live)
        step = max(1, RESULT_SLOTS // width)
        parts = [self._knn(queries[i : i + step], width, k) for i in range(0, len(queries), step)]
        if len(parts) == 1:
            return parts[0]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def _knn(self, queries: np.ndarray, width: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        try:
            labels, dist = self._index.knn_query(queries, k=width, num_threads=self._threads)
            return labels[:, :k].astype(np.int64), dist[:, :k]
        except RuntimeError as exc:
            if "contiguous 2D array" not in str(exc):
                raise
        labels, dist = np.full((len(queries), k), -1, np.int64), np.zeros((len(queries), k), np.float32)
        for i in range(len(queries)):
            row_labels, row_dist = self._reachable(queries[i : i + 1], width)
            found = min(k, row_labels.shape[1])
            labels[i, :found], dist[i, :found] = row_labels[0, :found], row_dist[0, :found]
        return labels, dist

    def _reachable(self, query: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
        """One query's best ``width`` items, or every live item its search can reach when that is fewer.

        A failed search never filled its result list, so it kept every live
        item it reached: run again with a filter that keeps all and counts
        them, it gives that number, which a last search returns without failing.
        """
        try:
            labels, dist = self._index.knn_query(query, k=width, num_threads=1)
            return labels, dist
        except RuntimeError:
            seen: set[int] = set()

        def keep_and_count(label: int) -> bool:
            seen.add(label)
            return True

        with contextlib.suppress(RuntimeError):
            self._index.knn_query(query, k=width, num_threads=1, filter=keep_and_count)
        if not seen:
            return np.zeros((1, 0), np.uint64), np.zeros((1, 0), np.float32)
        labels, dist = self._index.knn_query(query, k=len(seen), num_threads=1)
        return labels, dist

    def add(self, vectors: np.ndarray, labels: np.ndarray) -> None:
        needed = self._index.element_count + len(vectors)
        if needed > self._index.max_elements:
            self._index.resize_index(max(needed, int(self._index.max_elements * GROWTH)))
        self._index.add_items(vectors, labels, num_threads=self._threads)
        self._live += len(vectors)

    def remove(self, labels: np.ndarray) -> int:
        for label in labels.tolist():
            self._index.mark_deleted(label)
        self._live -= len(labels)
        return len(labels)

    def save(self, directory: Path) -> dict[str, Any]:
        self._index.save_index(str(directory / ENGINE_FILE))
        return {"file": ENGINE_FILE}

    def close(self) -> None:
        del self._index  # frees the graph now, not when the last reference to the engine goes


class HnswlibBackend(Backend):
    """HNSW graphs with hnswlib: approximate, fast, add and remove after the build."""

    name = "hnswlib"
    engine_distribution = "hnswlib"
    capabilities = Capabilities(exact=False, add=True, remove=True, native_filter=False, persist=True)
    params = (
        Param("m", int, 16, "graph degree M (links per node; memory grows with it)", minimum=2, maximum=2048),
        Param(
            "ef_construction",
            int,
            200,
            "candidate list size while building (higher: better graph, slower build); >= m",
            aliases=("efConstruction",),
            minimum=1,
            maximum=1 << 16,
        ),
        Param(
            "ef_search",
            int,
            DEFAULT_EF_SEARCH,
            "candidate list size per query, per call; the search uses max(ef_search, k)",
            aliases=("ef", "efSearch"),
            minimum=1,
            maximum=1 << 16,
            search=True,
        ),
        Param(
            "threads",
            int,
            None,
            "threads of one build, add or query batch (None: all cores)",
            aliases=("num_threads", "n_jobs"),
            minimum=1,
            maximum=4096,
            runtime=True,
        ),
        Param(
            "seed",
            int,
            100,
            "random seed of the level assignment",
            aliases=("random_seed",),
            minimum=0,
            maximum=2**32 - 1,
        ),
    )

    def build(self, vectors: np.ndarray, config: BackendConfig, ids: np.ndarray | None = None) -> HnswlibEngine:
        n, dim = vectors.shape
        index = hnswlib.Index(space=_space(config.metric), dim=dim)
        index.init_index(
            max_elements=n, M=config["m"], ef_construction=config["ef_construction"], random_seed=config["seed"]
        )
        index.add_items(vectors, np.arange(n), num_threads=config["threads"] or -1)
        return HnswlibEngine(index, config.metric, n, config["threads"])

    def load(self, files: EngineFiles, config: BackendConfig) -> HnswlibEngine:
        return _open(files.path(ENGINE_FILE), config)

    def adopt(self, path: Path, config: BackendConfig) -> Adopted:
        """A file of ``hnswlib.Index.save_index``: its space is not recorded, so ``metric`` says it.

        Its live labels must be ``0..n-1``: they become the ids.
        """
        header = read_native_header(path)
        live = np.sort(header.labels[~header.deleted])
        if not np.array_equal(live, np.arange(len(live))):
            raise NotAnIndexError(
                f"{path}: the hnswlib file's live labels are not 0..{len(live) - 1}, so they cannot serve as ids; "
                "rebuild with builder.from_embeddings(vectors, ids=labels)"
            )
        return Adopted(_open(path, config), metric=config.metric)

    def check_config(self, config: BackendConfig) -> None:
        if config["ef_construction"] < config["m"]:
            raise InvalidParameterError(
                f"hnswlib: ef_construction={config['ef_construction']} is smaller than m={config['m']}; "
                "the graph would be poor: use ef_construction >= m (default 200)"
            )

    def tune_space(self, config: BackendConfig) -> Mapping[str, Sequence[Any]]:
        return {"ef_search": TUNE_GRID}


def _space(metric: Metric) -> Literal["l2", "ip"]:
    return "l2" if metric is Metric.L2 else "ip"


def _open(path: Path, config: BackendConfig) -> HnswlibEngine:
    """An hnswlib file, with its dimension and live count read from the file itself (never from a manifest)."""
    header = read_native_header(path)
    index = hnswlib.Index(space=_space(config.metric), dim=header.dim)
    index.load_index(str(path))
    return HnswlibEngine(index, config.metric, header.live, config["threads"])
