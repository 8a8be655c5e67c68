"""Helpers of the CLI tests: an independent float64 reference and a toy approximate backend.

The toy backend (``approx``) stands in for an approximate engine while only
the numpy backend is installed: it searches a ``probe``/``n_lists`` share of
the catalogue by its own float64 brute force, so its results (and the recall
they reach) are computed without the library's exact search, which the CLI
uses for ground truth. It declares ``tune_space()``, leaves a build parameter
to the engine (``n_lists`` -> 16) and adopts bare ``.npy`` files as its
"native" format.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from rechub_serving import Adopted, Backend, BackendConfig, Capabilities, Engine, EngineFiles, Metric, Param

RESOLVED_LISTS = 16


def brute_force(items: np.ndarray, queries: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k (row positions, metric-table distances) in float64 with a full sort: the independent reference."""
    x = np.asarray(items, np.float64)
    q = np.asarray(queries, np.float64)
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
    if metric == "l2":
        dist = ((q[:, None, :] - x[None, :, :]) ** 2).sum(-1)
        order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    else:
        dist = q @ x.T
        order = np.argsort(-dist, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(dist, order, axis=1)


def reference_recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Recall written out for the tests (no library code): hits over true ids, all rows full."""
    return sum(len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth)) / truth.size


class ToyEngine(Engine):
    """Searches the rows whose label falls in the first ``probe`` of ``n_lists`` lists (label % n_lists)."""

    def __init__(self, vectors: np.ndarray, n_lists: int, metric: Metric):
        self.vectors = np.ascontiguousarray(vectors, np.float32)
        self.n_lists = n_lists
        self.kind = "l2" if metric is Metric.L2 else "ip"  # cosine: the core hands over normalised vectors
        self.distance = None  # the metric table's numbers

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return len(self.vectors)

    def search(self, queries, k, params, exclude):
        probe = min(int(params["probe"]), self.n_lists)
        rows = np.flatnonzero(np.arange(len(self.vectors)) % self.n_lists < probe)
        pos, dist = brute_force(self.vectors[rows], queries, min(k, len(rows)), self.kind)
        labels = np.full((len(queries), k), -1, np.int64)
        out = np.zeros((len(queries), k), np.float32)
        labels[:, : pos.shape[1]] = rows[pos]
        out[:, : pos.shape[1]] = dist
        return labels, out

    def resolved_params(self) -> Mapping[str, Any]:
        return {"n_lists": self.n_lists}

    def save(self, directory: Path) -> dict[str, Any]:
        np.save(directory / "vectors.npy", self.vectors)
        return {"n_lists": self.n_lists}


class ToyBackend(Backend):
    """An approximate toy engine with a tune space and "native" .npy files (adopted as l2)."""

    name = "approx"
    capabilities = Capabilities(persist=True)
    params = (
        Param("n_lists", int, None, "lists the rows are spread over (auto: 16)", minimum=1),
        Param("probe", int, 1, "lists searched per query", minimum=1, search=True),
        Param("batch", int, 64, "a search parameter that changes nothing (not in the tune space)", search=True),
    )

    def build(self, vectors: np.ndarray, config: BackendConfig, ids: np.ndarray | None = None) -> ToyEngine:
        return ToyEngine(vectors, config["n_lists"] or RESOLVED_LISTS, config.metric)

    def load(self, files: EngineFiles, config: BackendConfig) -> ToyEngine:
        return ToyEngine(np.load(files.path("vectors.npy")), int(files.meta["n_lists"]), config.metric)

    def adopt(self, path: Path, config: BackendConfig) -> Adopted:
        if path.suffix != ".npy":
            raise ValueError(f"{path} is not an .npy file")
        return Adopted(ToyEngine(np.load(path), config["n_lists"] or RESOLVED_LISTS, Metric.L2), "l2")

    def tune_space(self, config: BackendConfig) -> dict[str, list[int]]:
        n = config["n_lists"] or RESOLVED_LISTS
        return {"probe": [v for v in (1, 2, 4, 8, 16, 32) if v <= n]}


def toy_results(
    items: np.ndarray, queries: np.ndarray, k: int, probe: int, metric: str = "l2", n_lists: int = RESOLVED_LISTS
) -> np.ndarray:
    """What the toy engine returns, computed here again: the top-k row positions among the probed rows."""
    rows = np.flatnonzero(np.arange(len(items)) % n_lists < min(probe, n_lists))
    pos, _ = brute_force(items[rows], queries, k, metric)
    return rows[pos]
