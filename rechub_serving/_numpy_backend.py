"""The ``numpy`` backend: exact search, the reference every other backend is checked against.

Scores are computed block by block (a matrix product over at most
``block_bytes`` of scores at a time), each block reduced to its top-k with a
partial sort and merged into the running top-k, so memory is bounded by the
block size, not by n_queries x n_items. Registered through the same hook as
any plugin.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ._base import Builder, Indexer
from ._capabilities import Capabilities
from ._exact import exact_search
from ._ids import IdMap
from ._metrics import Metric
from ._params import Param
from .hookspecs import hookimpl

__all__ = ["NumpyBuilder", "NumpyIndexer"]


class NumpyIndexer(Indexer):
    """Vectors in one float32 matrix (optionally memory-mapped); exact search."""

    def __init__(self, vectors: np.ndarray, labels: np.ndarray):
        self._vectors = vectors
        self._labels = labels  # row -> label
        self._norms: np.ndarray | None = None
        self._row_of: np.ndarray | None = None

    def _state(self):
        # One tuple read keeps queries consistent while add/remove swap arrays.
        return self._vectors, self._labels

    def _search(self, queries, k, params, exclude):
        vectors, labels = self._state()
        norms = self._norms
        if self.metric is Metric.L2 and (norms is None or len(norms) != len(vectors)):
            norms = self._norms = np.einsum("ij,ij->i", vectors, vectors)
        cols = None
        if exclude is not None:
            row_of = self._row_lookup(labels)
            cols = [row_of[r][row_of[r] >= 0] for r in exclude]
        pos, dist = exact_search(
            vectors, queries, k, self.metric, block_bytes=params["block_bytes"], item_norms=norms, excluded_cols=cols
        )
        return np.where(pos >= 0, labels[np.maximum(pos, 0)], -1), dist

    def _row_lookup(self, labels: np.ndarray) -> np.ndarray:
        row_of = self._row_of
        if row_of is None or len(row_of) <= (labels.max() if len(labels) else 0):
            row_of = np.full(int(labels.max()) + 1 if len(labels) else 0, -1, np.int64)
            row_of[labels] = np.arange(len(labels))
            self._row_of = row_of
        return row_of

    def _add(self, vectors, labels):
        self._vectors, self._labels = np.concatenate([self._vectors, vectors]), np.concatenate([self._labels, labels])
        self._norms = self._row_of = None

    def _remove(self, labels):
        keep = ~np.isin(self._labels, labels)
        self._vectors, self._labels = np.ascontiguousarray(self._vectors[keep]), self._labels[keep]
        self._norms = self._row_of = None
        return int((~keep).sum())

    def _save(self, directory: Path) -> dict[str, Any]:
        np.save(directory / "vectors.npy", np.ascontiguousarray(self._vectors), allow_pickle=False)
        np.save(directory / "labels.npy", self._labels, allow_pickle=False)
        return {"vectors": "vectors.npy", "labels": "labels.npy"}

    def _engine_count(self) -> int:
        return len(self._labels)

    def _close(self) -> None:
        self._vectors = self._labels = self._norms = self._row_of = None  # type: ignore[assignment]


class NumpyBuilder(Builder):
    """Exact search with numpy: no extra dependency, bounded memory."""

    name = "numpy"
    capabilities = Capabilities(exact=True, add=True, remove=True, native_filter=True, persist=True, mmap=True)
    params = (
        Param("block_bytes", int, 64 << 20, "memory budget of one score block, in bytes", minimum=4096, search=True),
        Param("mmap", bool, False, "memory-map the vectors when loading a saved index", runtime=True),
    )

    @classmethod
    def engine_version(cls) -> str:
        return np.__version__

    def _build(self, vectors: np.ndarray, ids: IdMap) -> NumpyIndexer:
        return NumpyIndexer(vectors, np.arange(len(vectors), dtype=np.int64))

    def _load(self, directory: Path, manifest: Mapping[str, Any]) -> NumpyIndexer:
        mode = "r" if self.config["mmap"] else None
        vectors = np.load(directory / "vectors.npy", mmap_mode=mode, allow_pickle=False)
        labels = np.load(directory / "labels.npy", allow_pickle=False)
        return NumpyIndexer(vectors, labels)


@hookimpl
def register_backends(register):
    register(NumpyBuilder)
