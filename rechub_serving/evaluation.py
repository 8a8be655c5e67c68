"""Evaluating indexes: synthetic data, held-out queries, exact ground truth, recall.

One module, so that "recall" means the same thing everywhere: the
conformance suite, ``rechub-index bench`` / ``tune`` / ``quickstart`` and the
benchmarks all call these functions. Ground truth is the core's exact search
(:func:`ground_truth`); the tests check it against an independent float64
brute force.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from ._arrays import normalize_rows
from ._exact import exact_search
from ._metrics import Metric, parse_metric

__all__ = [
    "Catalogue",
    "clustered_data",
    "ground_truth",
    "holdout",
    "recall_at_k",
    "synthetic_catalogue",
    "true_distances",
]


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


class Catalogue(NamedTuple):
    """A synthetic catalogue: item and user vectors with their ids, and the items each user has seen."""

    items: np.ndarray
    item_ids: np.ndarray
    users: np.ndarray
    user_ids: np.ndarray
    seen: list[list[int]]


def synthetic_catalogue(
    n_items: int = 20000, dim: int = 64, n_users: int = 1000, seed: int = 0, seen_per_user: int = 5
) -> Catalogue:
    """A clustered catalogue like two-tower output, unit vectors (for the cosine metric).

    Items and users lie around shared cluster centres (users near the items
    they like); item ids start at 100000 so that they never look like row
    positions; ``seen`` lists, per user, ``seen_per_user`` item ids to exclude.
    """
    n_clusters = max(8, int(np.sqrt(n_items)))
    items = clustered_data(n_items, dim, n_clusters=n_clusters, spread=0.6, seed=seed)
    users = clustered_data(n_users, dim, n_clusters=n_clusters, spread=0.8, seed=seed + 1, centres_seed=seed)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    users /= np.linalg.norm(users, axis=1, keepdims=True)
    item_ids = np.arange(100000, 100000 + n_items, dtype=np.int64)
    rng = np.random.default_rng(seed + 2)
    size = min(seen_per_user, n_items)
    seen = [item_ids[rng.choice(n_items, size=size, replace=False)].tolist() for _ in range(n_users)]
    return Catalogue(items, item_ids, users, np.arange(n_users, dtype=np.int64), seen)


def holdout(n: int, n_queries: int, *, seed: int = 0, max_fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Split rows ``0..n-1`` into (catalogue rows, query rows): ``n_queries`` random rows held out as queries.

    At most ``max_fraction`` of the rows (and at least one) are held out, so
    the catalogue keeps its shape; both arrays are sorted. Needs ``n >= 2``.
    """
    if n < 2:
        raise ValueError(f"need at least 2 vectors to hold out queries, got {n}")
    n_q = max(1, min(n_queries, int(n * max_fraction)))
    picked = np.zeros(n, bool)
    picked[np.random.default_rng(seed).choice(n, size=n_q, replace=False)] = True
    return np.flatnonzero(~picked), np.flatnonzero(picked)


def ground_truth(
    items: Any,
    queries: Any,
    k: int,
    metric: str | Metric,
    *,
    exclude: Sequence[Sequence[int] | None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k (row positions, distances) of each query, in the metric table's meaning.

    ``exclude[i]`` lists the item rows query ``i`` must not get. Rows with
    fewer than ``k`` candidates are padded with position -1.
    """
    metric = parse_metric(metric)
    items = np.ascontiguousarray(items, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if metric is Metric.COSINE:
        items, queries = normalize_rows(items), normalize_rows(queries, "queries")
    banned = None
    if exclude is not None:
        if len(exclude) != len(queries):
            raise ValueError(f"exclude has {len(exclude)} rows for {len(queries)} queries; give one per query")
        banned = [np.unique(np.asarray(row if row is not None else [], dtype=np.int64)) for row in exclude]
    return exact_search(items, queries, k, metric, excluded_cols=banned)


def true_distances(items: Any, queries: Any, positions: np.ndarray, metric: str | Metric) -> np.ndarray:
    """The metric table's number between each query and the item at ``positions`` (-1 -> NaN), in float64."""
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
    """Recall@k: the share of the true top-k ids that ``found`` contains, pooled over the queries.

    ``found`` and ``truth`` hold one row of ids per query (row positions or
    external ids, best first); only their first ``k`` columns count (default:
    the width of ``truth``). Padding (-1, or None in an object array) never
    counts on either side, and an id found twice counts once.

    Pooled means total hits / total true ids: the mean of the per-query
    recalls when every query has ``k`` true ids. A query whose truth set is
    empty (every item excluded, an empty catalogue) has nothing to find, so it
    adds nothing to either total; when no query has any true id, recall is
    1.0: nothing was there to miss.
    """
    found = np.asarray(found)
    truth = np.asarray(truth)
    if found.ndim == 1 and truth.ndim == 1:
        found, truth = found[None, :], truth[None, :]
    if found.ndim != 2 or truth.ndim != 2:
        raise ValueError(f"found and truth must be (n_queries, k) arrays, got shapes {found.shape} and {truth.shape}")
    if len(found) != len(truth):
        raise ValueError(f"found has {len(found)} rows but truth has {len(truth)}; give one row per query")
    if k is None:
        k = truth.shape[1]
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    hits = total = 0
    for f_row, t_row in zip(found[:, :k].tolist(), truth[:, :k].tolist()):
        wanted = {t for t in t_row if t is not None and t != -1}
        hits += len(wanted.intersection(f_row))
        total += len(wanted)
    return hits / total if total else 1.0
