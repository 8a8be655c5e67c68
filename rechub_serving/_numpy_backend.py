"""The ``numpy`` backend: exact search, the reference every other backend is checked against.

Vectors live in one float32 matrix (memory-mapped when a saved index is
loaded with ``mmap=True``); queries run :func:`~rechub_serving._exact.exact_search`,
a blocked matrix product with bounded memory. Registered through the same
hook as any plugin.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._capabilities import Capabilities
from ._engine import Backend, BackendConfig, Engine, EngineFiles, RawDistance
from ._errors import IndexFormatError
from ._exact import exact_search
from ._metrics import Metric
from ._params import Param
from .hookspecs import hookimpl

__all__ = ["NumpyBackend", "NumpyEngine"]


class NumpyEngine(Engine):
    """Rows of one float32 matrix, each with its label; exact search."""

    def __init__(self, vectors: np.ndarray, labels: np.ndarray, metric: Metric, threads: int | None = None):
        self._threads = threads
        self._vectors = vectors
        self._labels = labels  # row -> label
        self._metric = metric
        self._norms = np.einsum("ij,ij->i", vectors, vectors) if metric is Metric.L2 else None
        self._row_of: np.ndarray | None = None
        self.distance = RawDistance.table(metric)

    @property
    def dim(self) -> int:
        return int(self._vectors.shape[1])

    @property
    def vectors(self) -> np.ndarray:
        """The stored rows (a memory map when loaded with ``mmap=True``)."""
        return self._vectors

    def __len__(self) -> int:
        return len(self._labels)

    def search(
        self, queries: np.ndarray, k: int, params: Mapping[str, Any], exclude: Sequence[np.ndarray] | None
    ) -> tuple[np.ndarray, np.ndarray]:
        labels = self._labels
        cols = None
        if exclude is not None:
            row_of = self._row_lookup()
            cols = [row_of[r[r < len(row_of)]] for r in exclude]
            cols = [c[c >= 0] for c in cols]
        pos, dist = exact_search(
            self._vectors,
            queries,
            k,
            self._metric,
            block_bytes=params["block_bytes"],
            item_norms=self._norms,
            excluded_cols=cols,
            threads=self._threads,
        )
        return np.where(pos >= 0, labels[np.maximum(pos, 0)], -1), dist

    def _row_lookup(self) -> np.ndarray:
        row_of = self._row_of
        if row_of is None:
            labels = self._labels
            row_of = np.full(int(labels.max()) + 1 if len(labels) else 0, -1, np.int64)
            row_of[labels] = np.arange(len(labels))
            self._row_of = row_of
        return row_of

    def add(self, vectors: np.ndarray, labels: np.ndarray) -> None:
        self._vectors = np.concatenate([self._vectors, vectors])
        self._labels = np.concatenate([self._labels, labels])
        if self._norms is not None:
            self._norms = np.concatenate([self._norms, np.einsum("ij,ij->i", vectors, vectors)])
        self._row_of = None

    def remove(self, labels: np.ndarray) -> int:
        keep = ~np.isin(self._labels, labels)
        self._vectors, self._labels = np.ascontiguousarray(self._vectors[keep]), self._labels[keep]
        if self._norms is not None:
            self._norms = self._norms[keep]
        self._row_of = None
        return int((~keep).sum())

    def save(self, directory: Path) -> dict[str, Any]:
        np.save(directory / "vectors.npy", np.ascontiguousarray(self._vectors), allow_pickle=False)
        np.save(directory / "labels.npy", self._labels, allow_pickle=False)
        return {"vectors": "vectors.npy", "labels": "labels.npy"}

    def close(self) -> None:
        self._vectors = np.zeros((0, self._vectors.shape[1]), np.float32)
        self._labels = np.zeros(0, np.int64)
        self._norms = self._row_of = None


class NumpyBackend(Backend):
    """Exact search with numpy: no extra dependency, bounded memory."""

    name = "numpy"
    engine_distribution = "numpy"
    capabilities = Capabilities(exact=True, add=True, remove=True, native_filter=True, persist=True, mmap=True)
    params = (
        Param(
            "block_bytes",
            int,
            64 << 20,
            "memory budget of one score block, in bytes",
            minimum=4096,
            maximum=1 << 40,
            search=True,
        ),
        Param("mmap", bool, False, "memory-map the vectors when loading a saved index", runtime=True),
        Param(
            "threads",
            int,
            None,
            "threads that select the top-k (None: one, measured fastest on 2 cores; the matrix product uses BLAS's own)",
            aliases=("n_jobs",),
            minimum=1,
            maximum=1024,
            runtime=True,
        ),
    )

    def build(self, vectors: np.ndarray, config: BackendConfig, ids: np.ndarray | None = None) -> NumpyEngine:
        return NumpyEngine(vectors, np.arange(len(vectors), dtype=np.int64), config.metric, config["threads"])

    def load(self, files: EngineFiles, config: BackendConfig) -> NumpyEngine:
        vectors = np.load(files.path("vectors.npy"), mmap_mode="r" if config["mmap"] else None, allow_pickle=False)
        labels = np.load(files.path("labels.npy"), allow_pickle=False)
        if vectors.ndim != 2 or vectors.dtype != np.float32:
            raise IndexFormatError(f"vectors.npy holds {vectors.dtype} {vectors.shape}, expected a float32 matrix")
        if labels.ndim != 1 or labels.dtype != np.int64 or len(labels) != len(vectors):
            raise IndexFormatError(f"labels.npy holds {labels.dtype} {labels.shape}, expected one int64 per vector")
        if len(labels) and (labels.min() < 0 or len(np.unique(labels)) != len(labels)):
            raise IndexFormatError("labels.npy holds negative or repeated labels")
        return NumpyEngine(vectors, labels, config.metric, config["threads"])


@hookimpl
def register_backends(register):
    register(NumpyBackend)
