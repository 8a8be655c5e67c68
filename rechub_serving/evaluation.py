"""Small functional helpers to evaluate indexes: data, ground truth, recall.

Used by the conformance suite, ``rechub-index bench`` / ``tune`` and the
benchmarks, so that "recall" means the same thing everywhere.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._arrays import normalize_rows
from ._exact import exact_search
from ._metrics import Metric, parse_metric

__all__ = ["clustered_data", "ground_truth", "recall_at_k", "true_distances"]


def clustered_data(
    n: int,
    dim: int,
    *,
    n_clusters: int = 32,
    spread: float = 0.35,
    seed: int = 0,
    centres_seed: int | None = None,
) -> np.ndarray:
    """``n`` float32 vectors around ``n_clusters`` Gaussian centres (like real embeddings).

    The centres come from ``centres_seed`` (default: ``seed``): queries that
    look like the catalogue (users near the items they like) share the
    catalogue's seed as ``centres_seed`` and use another ``seed``.
    """
    rng = np.random.default_rng(seed)
    centre_rng = rng if centres_seed is None else np.random.default_rng(centres_seed)
    centres = centre_rng.normal(size=(n_clusters, dim)).astype(np.float32)
    which = rng.integers(0, n_clusters, size=n)
    noise = rng.normal(scale=spread, size=(n, dim)).astype(np.float32)
    return np.ascontiguousarray(centres[which] + noise, dtype=np.float32)


def ground_truth(items: Any, queries: Any, k: int, metric: str | Metric) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k (row positions, distances) by the numpy reference, in the metric table's meaning."""
    metric = parse_metric(metric)
    items = np.ascontiguousarray(items, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if metric is Metric.COSINE:
        items, queries = normalize_rows(items), normalize_rows(queries, "queries")
    return exact_search(items, queries, k, metric)


def true_distances(items: Any, queries: Any, positions: np.ndarray, metric: str | Metric) -> np.ndarray:
    """The metric table's number between each query and the item at ``positions`` (-1 -> NaN)."""
    metric = parse_metric(metric)
    items = np.asarray(items, dtype=np.float64)
    queries = np.asarray(queries, dtype=np.float64)
    if metric is Metric.COSINE:
        items = items / np.linalg.norm(items, axis=1, keepdims=True)
        queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    picked = items[np.maximum(positions, 0)]  # (n, k, d)
    if metric is Metric.L2:
        out = ((picked - queries[:, None, :]) ** 2).sum(-1)
    else:
        out = (picked * queries[:, None, :]).sum(-1)
    return np.where(positions >= 0, out, np.nan)


def recall_at_k(found: Any, truth: Any, k: int | None = None) -> float:
    """Mean fraction of the true top-k ids that ``found`` contains (padding never counts)."""
    found = np.asarray(found)
    truth = np.asarray(truth)
    k = k or truth.shape[1]
    hits = 0
    for f, t in zip(found[:, :k], truth[:, :k]):
        t = t[t != -1] if t.dtype != object else t[t != None]  # noqa: E711
        hits += len(set(f.tolist()) & set(t.tolist()))
    total = sum(min(k, int((t != -1).sum()) if t.dtype != object else k) for t in truth[:, :k])
    return hits / max(total, 1)
